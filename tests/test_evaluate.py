"""Evaluation runner: one pass for several checkpoints, missing-not-zero, run records, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest

from aaclip import data, runs
from aaclip import train as tr
from aaclip.config import apply_overrides, preset
from aaclip.evaluate import evaluate


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory):
    """A tiny model trained 1 + 2 epochs on a 16-image subset; its config and run folder."""
    tmp = tmp_path_factory.mktemp("evalrun")
    records = data.load_records(synthetic_root / "train.jsonl")
    subset = synthetic_root / "eval_subset.jsonl"
    data.write_records(subset, records[:8] + records[-8:])
    test_subset = synthetic_root / "eval_test.jsonl"
    test = data.load_records(synthetic_root / "industrial_test.jsonl")
    picked = [
        r
        for cls in ("grass", "coins")
        for label in (0, 1)
        for r in [r for r in test if r.class_name == cls and r.label == label][:6]
    ]
    data.write_records(test_subset, picked)
    cfg = apply_overrides(
        preset("smoke", data_root=str(synthetic_root)),
        [
            f"data.train_records={subset}",
            f'data.test_records=["{test_subset}"]',
            'data.test_datasets=["synthetic-industrial"]',
            'data.test_domains=["industrial"]',
            "backbone.image_size=64",
            "model.stage1_epochs=1",
            "model.stage2_epochs=2",
        ],
    )
    tr.train(cfg, tmp / "run", progress=False)
    return cfg, tmp / "run"


def test_several_checkpoints_in_one_pass_equal_single_passes(trained, tmp_path):
    cfg, run = trained
    ckpts = [runs.checkpoint_path(run, 2, 1), runs.checkpoint_path(run, 2, 2)]
    both = evaluate(cfg, ckpts, tmp_path / "both", progress=False)
    for c in ckpts:
        single = evaluate(cfg, [c], tmp_path / c.stem, progress=False)
        a = both[both.checkpoint == c.stem].reset_index(drop=True)
        pd.testing.assert_frame_equal(a, single, check_exact=False, rtol=1e-6)
    assert set(both.checkpoint) == {c.stem for c in ckpts}


def test_tables_run_record_and_smoke_note(trained, tmp_path):
    cfg, run = trained
    evaluate(cfg, [runs.checkpoint_path(run, 2, 2)], tmp_path, progress=False)
    stem = tmp_path / "stage2_epoch002" / "synthetic-industrial"
    record = json.loads((stem / "run.json").read_text())
    for key in (
        "config",
        "backbone",
        "dataset",
        "n_records",
        "git_revision",
        "versions",
        "device",
        "wall_time_s",
        "per_class",
    ):
        assert key in record, key
    assert record["n_records"] == 24
    md = (stem / "metrics.md").read_text()
    assert md.startswith("> SMOKE PROFILE")
    csv = pd.read_csv(stem / "metrics.csv")
    assert list(csv.class_name)[-1] == "mean"


def test_single_label_class_reports_missing_not_zero(trained, tmp_path, synthetic_root):
    cfg, run = trained
    normal_only = synthetic_root / "normal_only.jsonl"
    recs = [r for r in data.load_records(synthetic_root / "industrial_test.jsonl") if r.label == 0]
    data.write_records(normal_only, recs[:6])
    cfg = apply_overrides(cfg, [f'data.test_records=["{normal_only}"]'])
    with pytest.warns(UserWarning, match="image metrics are undefined"):
        df = evaluate(cfg, [runs.checkpoint_path(run, 2, 2)], tmp_path, progress=False)
    row = df.iloc[0]
    assert math.isnan(row.image_auroc) and math.isnan(row.pixel_auroc)
    md = (tmp_path / "stage2_epoch002/synthetic-industrial/metrics.md").read_text()
    assert "–" in md and "| 0.00 |" not in md


def test_classification_only_set_has_no_pixel_metrics(trained, tmp_path, synthetic_root):
    cfg, run = trained
    recs = data.load_records(synthetic_root / "industrial_test.jsonl")
    mixed = [r for r in recs if r.class_name == "coins"]
    no_masks = [data.Record(r.image_path, r.label, r.class_name) for r in mixed]
    path = synthetic_root / "no_masks.jsonl"
    data.write_records(path, no_masks)
    cfg = apply_overrides(cfg, [f'data.test_records=["{path}"]'])
    df = evaluate(cfg, [runs.checkpoint_path(run, 2, 2)], tmp_path, progress=False)
    mean = df[df.class_name == "mean"].iloc[0]
    assert math.isnan(mean.pixel_auroc) and not math.isnan(mean.image_auroc)


def test_cli_test_on_empty_record_file_is_one_line_exit_2(trained, tmp_path):
    cfg, run = trained
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aaclip.cli",
            "test",
            "--run",
            str(run),
            "--set",
            f'data.test_records=["{empty}"]',
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "no records" in proc.stderr


def test_cli_test_prints_means(trained):
    cfg, run = trained
    proc = subprocess.run(
        [sys.executable, "-m", "aaclip.cli", "test", "--run", str(run), "--epochs", "1,2"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "stage2_epoch001" in proc.stdout and "stage2_epoch002" in proc.stdout
    assert "none is selected on the test set" in proc.stdout


def test_predict_folder_and_single_image(trained, tmp_path, synthetic_root):
    from aaclip.predict import predict_files

    _, run = trained
    ckpt = runs.checkpoint_path(run, 2, 2)
    folder = synthetic_root / "grass" / "test"
    csv_path = predict_files(ckpt, [folder], "grass", tmp_path / "many")
    table = pd.read_csv(csv_path)
    # the method's per-image rule (AA-CLIP: 0.5 * max(raw map) + 0.5 * p), not a probability
    assert len(table) == 48 and table.raw_score.map(math.isfinite).all()
    assert (table["mode"] == "zero-shot").all()
    assert table.score.isna().all() and table.label.isna().all()  # not calibrated: raw only
    assert (tmp_path / "many" / table.overlay[0]).is_file()
    one = next(folder.rglob("*.png"))
    single = pd.read_csv(predict_files(ckpt, [one], "grass", tmp_path / "one"))
    assert len(single) == 1 and single.score.isna().all()
    assert single.raw_score.tolist() == table[table.image == str(one)].raw_score.tolist()


def test_predict_cli_missing_image_exit_2(trained, tmp_path):
    _, run = trained
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aaclip.cli",
            "predict",
            "--checkpoint",
            str(runs.checkpoint_path(run, 2, 2)),
            "--description",
            "grass",
            "--out",
            str(tmp_path),
            str(tmp_path / "missing.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "missing.png" in proc.stderr


def test_select_on_validation_returns_a_checkpoint_of_the_run(trained, synthetic_root):
    from aaclip import protocols

    cfg, run = trained
    best = protocols.select_on_validation(cfg, run, str(synthetic_root / "eval_test.jsonl"))
    assert best in runs.stage_checkpoints(run, cfg)


def test_select_on_test_is_explicit_and_marks_every_table(trained):
    cfg, run = trained
    proc = subprocess.run(
        [sys.executable, "-m", "aaclip.cli", "test", "--run", str(run), "--select-on-test"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "SELECTED ON THE TEST SET" in proc.stdout
    for md in (run / "eval").rglob("metrics.md"):
        assert "CHECKPOINT SELECTED ON THE TEST SET" in md.read_text()
    for rec in (run / "eval").rglob("run.json"):
        assert json.loads(rec.read_text())["selected_on_test"] is True


def test_nan_in_a_map_is_a_clear_error_naming_the_class():
    import numpy as np
    import torch

    from aaclip.evaluate import ClassPredictions, class_metrics

    maps = torch.rand(3, 8, 8)
    maps[1, 2, 2] = float("nan")
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, :2, :2] = True
    pred = ClassPredictions("bottle", maps, torch.rand(3), np.array([1, 0, 0]), masks)
    with pytest.raises(ValueError, match=r"^bottle: maps contain 1 non-finite"):
        class_metrics(pred)
