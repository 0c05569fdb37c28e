"""Variants trained ahead in parallel processes (notebooks 04, 05) equal variants trained one
after another in this process: same checkpoints bit for bit, same tables."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aaclip import analysis, runs
from aaclip.config import apply_overrides, preset


def _base(synthetic_root: Path):
    cfg = preset("smoke", data_root=str(synthetic_root))
    return apply_overrides(cfg, ["train.max_epochs=1", "train.shots=4"])


@pytest.mark.slow
def test_train_ahead_in_two_processes_equals_training_in_turn(synthetic_root, tmp_path):
    base = _base(synthetic_root)
    # official descriptions fall back to folder names on synthetic classes, with a warning
    # per class during training: the warnings reach the result either way
    official = ["model.class_descriptions=official"]
    jobs = [("default", base, [], None), ("official", base, official, "official")]
    seen: list[str] = []
    parallel = analysis.VariantRunner(lambda f: tmp_path / "parallel" / f, "cpu", seen.append)
    parallel.train_ahead(jobs, workers=2)
    assert any("training 2 variants ahead, 2 at a time" in s for s in seen), seen
    for name, cfg, overrides, folder in jobs:  # trained ahead: finished before any call
        vcfg = apply_overrides(cfg, overrides)
        assert runs.final_checkpoint(tmp_path / "parallel" / (folder or name), vcfg).is_file()
    in_turn = analysis.VariantRunner(lambda f: tmp_path / "in_turn" / f, "cpu")
    in_turn.train_ahead(jobs, workers=1)  # one worker: nothing ahead, each call trains
    assert not (tmp_path / "in_turn").exists()

    a = analysis.run_jobs(parallel, jobs)
    b = analysis.run_jobs(in_turn, jobs)
    for ra, rb in zip(a, b, strict=True):
        ca = load_file(runs.final_checkpoint(ra.run_dir, ra.cfg))
        cb = load_file(runs.final_checkpoint(rb.run_dir, rb.cfg))
        assert ca.keys() == cb.keys()
        assert all(torch.equal(ca[k], cb[k]) for k in ca), ra.name
        cols = ["dataset", "class_name", "pixel_auroc", "image_auroc"]
        assert ra.table[cols].equals(rb.table[cols]), ra.name
        assert ra.warnings == rb.warnings, ra.name
    assert a[1].warnings and not a[0].warnings  # training's warnings came back from the worker


def test_train_ahead_skips_finished_runs_aliases_and_repeats(synthetic_root, tmp_path):
    base = _base(synthetic_root)
    alias = tmp_path / "main"
    runner = analysis.VariantRunner(
        lambda f: tmp_path / f, "cpu", aliases=[(apply_overrides(base, []), alias)]
    )
    clip = analysis.component_jobs(base)[0]  # frozen CLIP: nothing to train
    seen: list[str] = []
    runner.progress = seen.append
    jobs = [("a", base, [], None), clip, ("b", base, ["train.shots=2"], None),
            ("c", base, ["train.shots=2"], None)]  # fmt: skip
    runner.train_ahead(jobs, workers=1)  # one worker: nothing ahead
    assert seen == [] and not any(tmp_path.iterdir())
    # the alias (the main run), CLIP and a repeated config leave one job, trained in a worker
    runner.train_ahead(jobs, workers=2)
    assert seen == ["training 1 variant ahead, 1 at a time"]
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
    runner.train_ahead(jobs, workers=2)  # finished now: nothing again
    assert len(seen) == 1
