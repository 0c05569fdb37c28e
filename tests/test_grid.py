"""The experiment grid: expansion, a killed grid resumed without redoing finished jobs, failed
jobs listed and rerun alone, mean ± std over seeds, and the Slurm engine through submitit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from aaclip import data, grid, results
from aaclip.cli import main

REPO = Path(__file__).resolve().parent.parent


def tiny_spec(root: Path, **over) -> grid.Spec:
    """clip and aaclip × seeds 1, 2 on 13 training images, 18 + 18 test images at 64 px."""
    records = data.load_records(root / "train.jsonl")
    picked = [r for r in records if r.label == 1][:7] + [r for r in records if r.label == 0][:6]
    data.write_records(root / "grid_train.jsonl", picked)
    tests = []
    for name in ("industrial_test", "medical_test"):
        records = data.load_records(root / f"{name}.jsonl")
        small = []
        for c in data.class_names(records):
            of = [r for r in records if r.class_name == c]
            small += [r for r in of if r.label == 0][:3] + [r for r in of if r.label == 1][:3]
        data.write_records(root / f"grid_{name}.jsonl", small)
        tests.append(str(root / f"grid_{name}.jsonl"))
    values = {
        "methods": ["clip", "aaclip"],
        "data_root": str(root),
        "seeds": [1, 2],
        "overrides": [
            "train.max_epochs=1",
            "backbone.image_size=64",
            f"data.train_records={root / 'grid_train.jsonl'}",
            f"data.test_records={json.dumps(tests)}",
        ],
        "device": "cpu",
    }
    return grid.Spec(**{**values, **over})


def test_expansion_names_and_refusals(synthetic_root):
    spec = tiny_spec(synthetic_root, shots=[None, 2], ablations=["stage1_levels_all"])
    names = [j.name for j in grid.expand(spec)]
    assert len(names) == len(set(names)) == 2 * 2 + 2 * 2 * 2  # clip: base; aaclip: 2 variants
    assert names[0] == "clip_base_cross_fullshot_seed1"
    assert "aaclip_stage1_levels_all_cross_2shot_seed2" in names
    with pytest.raises(ValueError, match="defined by none"):
        grid.expand(tiny_spec(synthetic_root, ablations=["nope"]))
    with pytest.raises(ValueError, match="needs `sets`"):
        grid.expand(tiny_spec(synthetic_root, protocols=["leave_one_out"]))
    loo = tiny_spec(synthetic_root, methods=["clip"], seeds=[1], protocols=["leave_one_out"],
                    sets={"a": "x.jsonl", "b": "y.jsonl"})  # fmt: skip
    assert [j.name for j in grid.expand(loo)] == [
        "clip_base_leave_one_out-a_fullshot_seed1",
        "clip_base_leave_one_out-b_fullshot_seed1",
    ]


def test_mean_std_over_seeds():
    long = pd.DataFrame(
        {"method": ["a", "a", "b"], "metric": ["image_auroc"] * 3, "seed": [1, 2, 1],
         "value": [0.8, 0.9, 0.5]}
    )  # fmt: skip
    stats = results.mean_std(long, by=["method", "metric"])
    assert stats["mean"].round(6).tolist() == [0.85, 0.5] and stats["n"].tolist() == [2, 1]
    assert stats["std"].iloc[0] == pytest.approx(0.0707107, rel=1e-5) and stats["std"].isna()[1]
    table = results.mean_std_table(stats)
    assert table["image_auroc"].tolist() == ["85.00 ± 7.07", "50.00 ± –"]
    assert table["seeds"].tolist() == [2, 1]


def test_killed_grid_resumes_without_redoing_finished_jobs(synthetic_root, tmp_path):
    spec = tiny_spec(synthetic_root)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec.__dict__))
    folder = tmp_path / "grid"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "aaclip", "grid", "--spec", str(spec_file),
               "--out", str(folder), "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(command, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 240
    while not list(folder.glob(f"*/{grid.RECORD}")) and proc.poll() is None:
        assert time.time() < deadline, "no job finished in time"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the grid and its worker, mid-grid
    proc.wait()
    done = {p.parent.name: p.stat().st_mtime_ns for p in folder.glob(f"*/{grid.RECORD}")}
    assert 1 <= len(done) < 4

    outcomes = grid.run(spec, folder, workers=0)  # the same grid again, in this process
    by_name = {o["name"]: o["status"] for o in outcomes}
    assert {n for n, s in by_name.items() if s == "skipped"} == set(done)
    assert sorted(by_name.values()).count("done") == 4 - len(done)
    for name, mtime in done.items():  # finished jobs were not redone
        assert (folder / name / grid.RECORD).stat().st_mtime_ns == mtime
    assert all(s == "skipped" for s in (o["status"] for o in grid.run(spec, folder, workers=0)))

    long, table = grid.aggregate(spec, folder)
    assert len(long) == 4 * 2 * 7  # jobs × targets × metrics
    assert len(table) == 2 * 2 and (table["seeds"] == 2).all()  # methods × targets
    assert table["pixel_auroc"].str.contains(" ± ").all()
    assert "±" in (folder / "mean_std.md").read_text()
    assert (folder / "long.csv").is_file() and (folder / "mean_std_values.csv").is_file()
    for name in by_name:  # every job has its run records
        assert json.loads((folder / name / grid.RECORD).read_text())["status"] == "done"
        assert list((folder / name / "eval").glob("*/*/run.json"))


def test_failed_job_is_listed_and_rerun_alone(synthetic_root, tmp_path, capsys):
    spec = tiny_spec(synthetic_root, methods=["aaclip"])
    spec.overrides.append(f"data.train_records={tmp_path / 'missing.jsonl'}")
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec.__dict__))
    argv = ["grid", "--spec", str(spec_file), "--out", str(tmp_path / "g"), "--workers", "0"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "FAILED aaclip_base_cross_fullshot_seed1: RecordError" in out
    assert "rerun: --only aaclip_base_cross_fullshot_seed1" in out
    assert [f["name"] for f in grid.failures(spec, tmp_path / "g")] == [
        "aaclip_base_cross_fullshot_seed1",
        "aaclip_base_cross_fullshot_seed2",
    ]
    outcomes = grid.run(spec, tmp_path / "g", workers=0, only=["aaclip_base_cross_fullshot_seed2"])
    assert [(o["name"], o["status"]) for o in outcomes] == [
        ("aaclip_base_cross_fullshot_seed2", "failed")
    ]
    with pytest.raises(ValueError, match="no job named 'nope'"):
        grid.run(spec, tmp_path / "g", only=["nope"])


def test_slurm_engine_through_submitit_or_one_line_error(synthetic_root, tmp_path, monkeypatch):
    spec = tiny_spec(synthetic_root, methods=["clip"], seeds=[1], slurm={"cluster": "debug"})
    pytest.importorskip("submitit")
    outcomes = grid.run(spec, tmp_path / "g", engine="slurm")
    assert [o["status"] for o in outcomes] == ["done"]
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if it were not installed
    with pytest.raises(ValueError, match=r"--engine slurm needs submitit: pip install"):
        grid.run(spec, tmp_path / "other", engine="slurm")
