"""The run folder never traps and never mixes; the CLI's method and config verbs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aaclip import data, runs
from aaclip import train as tr
from aaclip.config import apply_overrides, preset
from aaclip.methods.aaclip import AAClip


def tiny(root, **over):
    """AA-CLIP smoke on 8 training images at 64 px, 1 + 1 epochs."""
    records = data.load_records(root / "train.jsonl")
    picked = [r for r in records if r.label == 1][:4] + [r for r in records if r.label == 0][:4]
    data.write_records(root / "runfolder8.jsonl", picked)
    overrides = {
        "data.train_records": str(root / "runfolder8.jsonl"),
        "backbone.image_size": 64,
        "model.stage1_epochs": 1,
        "model.stage2_epochs": 1,
        **over,
    }
    return apply_overrides(
        preset("smoke", data_root=str(root)), [f"{k}={v}" for k, v in overrides.items()]
    )


def log_epochs(run_dir):
    return [(r["stage"], r["epoch"]) for r in runs.read_log(run_dir)]


def test_a_run_that_failed_before_its_first_step_leaves_no_lock(
    synthetic_root, tmp_path, monkeypatch
):
    def broken(self, stage, batch):
        raise RuntimeError("data pipeline broke")

    monkeypatch.setattr(AAClip, "loss", broken)
    with pytest.raises(RuntimeError):
        tr.train(tiny(synthetic_root), tmp_path / "run", progress=False)
    monkeypatch.undo()
    tr.train(tiny(synthetic_root, **{"model.stage2_lr": 0.01}), tmp_path / "run", progress=False)
    assert log_epochs(tmp_path / "run") == [(1, 1), (2, 1)]


def test_another_config_names_the_keys_and_the_ways_out(synthetic_root, tmp_path):
    tr.train(tiny(synthetic_root), tmp_path / "run", progress=False)
    other = tiny(synthetic_root, **{"model.stage2_lr": 0.1})
    with pytest.raises(tr.RunFolderError, match=r"model.stage2_lr: 0.005 -> 0.1.*--fresh"):
        tr.train(other, tmp_path / "run", progress=False)


def test_growing_the_epochs_of_a_finished_run_continues_it(synthetic_root, tmp_path):
    tr.train(tiny(synthetic_root), tmp_path / "run", progress=False)
    more = tr.train(
        tiny(synthetic_root, **{"model.stage2_epochs": 2}), tmp_path / "run", progress=False
    )
    assert [p.name for p in more.checkpoints] == ["stage2_epoch002.safetensors"]
    assert log_epochs(tmp_path / "run") == [(1, 1), (2, 1), (2, 2)]
    # growing an earlier, finished stage cannot continue: refused with the keys named
    with pytest.raises(tr.RunFolderError, match="model.stage1_epochs: 1 -> 2"):
        tr.train(tiny(synthetic_root, **{"model.stage1_epochs": 2, "model.stage2_epochs": 2}),
                 tmp_path / "run", progress=False)  # fmt: skip


def test_fresh_moves_the_old_run_aside_instead_of_mixing(synthetic_root, tmp_path):
    tr.train(tiny(synthetic_root), tmp_path / "run", progress=False)
    tr.train(tiny(synthetic_root, **{"model.stage2_epochs": 2}), tmp_path / "run", progress=False,
             fresh=True)  # fmt: skip
    assert log_epochs(tmp_path / "run") == [(1, 1), (2, 1), (2, 2)]  # no duplicate epochs
    (old,) = tmp_path.glob("run.old-*")
    assert log_epochs(old) == [(1, 1), (2, 1)]
    assert runs.checkpoint_path(old, 2, 1).is_file()


def cli(*args, cwd=None):
    proc = subprocess.run(
        [sys.executable, "-m", "aaclip.cli", *args], capture_output=True, text=True, cwd=cwd
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_unknown_method_is_one_line_listing_the_registered_ones(tmp_path):
    code, _, err = cli("train", "--method", "nope", "--run", str(tmp_path / "r"))
    assert code == 2 and err.count("\n") == 1
    assert "unknown method 'nope'; registered: clip, aaclip" in err


def test_methods_and_config_verbs(tmp_path):
    code, out, _ = cli("methods")
    assert code == 0 and "aaclip" in out and "stages: text, image" in out
    code, out, _ = cli("config", "--profile", "smoke", "--method", "aaclip")
    assert code == 0 and "model.stage2_epochs" in out and "train.max_epochs" in out
    assert "model.vv_attention_axis   batch  # batch (released defect 2) | tokens" in out


def test_test_honours_weights_and_runs_from_any_folder(synthetic_root, tmp_path):
    cfg = tiny(synthetic_root)
    tr.train(cfg, tmp_path / "run", progress=False)
    missing = tmp_path / "other-weights.safetensors"
    code, _, err = cli("test", "--run", str(tmp_path / "run"), "--weights", str(missing))
    assert code == 2 and str(missing) in err  # honoured, not ignored
    code, out, err = cli("test", "--run", str(tmp_path / "run"), cwd=tmp_path.parent)
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["method"] == "aaclip"
