"""Training: checkpoints, exact resume after a crash, NaN stop, refusal of foreign checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from aaclip import checkpoints as ck
from aaclip import data, runs
from aaclip import train as tr
from aaclip.config import apply_overrides, preset
from aaclip.methods.aaclip import AAClip


def small_config(root, tmp_path, n=16, **over):
    """Smoke config on a 16-image subset of the synthetic training set."""
    records = data.load_records(root / "train.jsonl")
    picked = [r for r in records if r.label == 1][: n // 2] + [r for r in records if r.label == 0][
        : n // 2
    ]
    subset = root / f"subset{n}.jsonl"
    data.write_records(subset, picked)
    cfg = preset("smoke", data_root=str(root))
    overrides = [
        f"data.train_records={subset}",
        "backbone.image_size=64",
        "model.stage1_epochs=1",
        "model.stage2_epochs=2",
        "model.stage1_batch_size=8",
        "model.stage2_batch_size=4",
    ] + [f"{k}={v}" for k, v in over.items()]
    return apply_overrides(cfg, overrides)


def adapters(run_dir, stage, epoch):
    tensors, meta = ck.load_adapters(runs.checkpoint_path(run_dir, stage, epoch))
    return tensors, meta


def test_checkpoints_per_epoch_with_identity_and_config(synthetic_root, tmp_path):
    cfg = small_config(synthetic_root, tmp_path)
    result = tr.train(cfg, tmp_path / "run", progress=False)
    names = [p.name for p in result.checkpoints]
    assert names == [
        "stage1_epoch001.safetensors",
        "stage2_epoch001.safetensors",
        "stage2_epoch002.safetensors",
    ]
    tensors, meta = adapters(tmp_path / "run", 2, 2)
    assert meta["backbone"]["name"] == "aaclip-tiny" and meta["stage"] == 2
    assert meta["config"] == json.loads(cfg.to_json())
    assert not any(k.startswith("clip.") for k in tensors)  # adapters only, never the backbone
    log = [json.loads(line) for line in (tmp_path / "run/train_log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in log] == [(1, 1), (2, 1), (2, 2)]
    assert not list((tmp_path / "run").rglob("*.tmp"))


def test_crash_then_resume_equals_uninterrupted(synthetic_root, tmp_path, monkeypatch):
    cfg = small_config(synthetic_root, tmp_path)
    tr.train(cfg, tmp_path / "straight", progress=False)

    calls = {"n": 0}
    real = AAClip.loss

    def crashing(self, stage, batch):
        calls["n"] += stage.name == "image"
        if calls["n"] == 6:  # mid-way through stage-2 epoch 2
            raise KeyboardInterrupt("simulated kill")
        return real(self, stage, batch)

    monkeypatch.setattr(AAClip, "loss", crashing)
    with pytest.raises(KeyboardInterrupt):
        tr.train(cfg, tmp_path / "crashed", progress=False)
    assert not runs.checkpoint_path(tmp_path / "crashed", 2, 2).exists()
    monkeypatch.setattr(AAClip, "loss", real)
    resumed = tr.train(cfg, tmp_path / "crashed", progress=False)
    assert [p.name for p in resumed.checkpoints] == ["stage2_epoch002.safetensors"]

    a, _ = adapters(tmp_path / "straight", 2, 2)
    b, _ = adapters(tmp_path / "crashed", 2, 2)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_a_run_folder_with_another_config(synthetic_root, tmp_path):
    cfg = small_config(synthetic_root, tmp_path, **{"model.stage2_epochs": 1})
    tr.train(cfg, tmp_path / "run", progress=False)
    other = apply_overrides(cfg, ["model.stage2_lr=0.1"])
    with pytest.raises(ValueError, match="another config"):
        tr.train(other, tmp_path / "run", progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(synthetic_root, tmp_path, monkeypatch):
    cfg = small_config(synthetic_root, tmp_path)
    real = AAClip.loss
    calls = {"n": 0}

    def poisoned(self, stage, batch):
        calls["n"] += stage.name == "image"
        terms = real(self, stage, batch)
        if calls["n"] == 5:
            terms["classification"] = terms["classification"] * float("nan")
        return terms

    monkeypatch.setattr(AAClip, "loss", poisoned)
    match = r"stage 2 \(image\) epoch 2 .*nan.*stage2_epoch001"
    with pytest.raises(tr.TrainingDivergedError, match=match):
        tr.train(cfg, tmp_path / "run", progress=False)
    assert runs.checkpoint_path(tmp_path / "run", 2, 1).is_file()
    assert not runs.checkpoint_path(tmp_path / "run", 2, 2).exists()
    tensors, _ = adapters(tmp_path / "run", 2, 1)
    assert all(torch.isfinite(v).all() for v in tensors.values())


def test_checkpoint_from_other_backbone_or_size_is_refused(synthetic_root, tmp_path):
    cfg = small_config(synthetic_root, tmp_path, **{"model.stage2_epochs": 1})
    tr.train(cfg, tmp_path / "run", progress=False)
    path = runs.checkpoint_path(tmp_path / "run", 2, 1)
    from aaclip.backbone import create_backbone

    bigger = create_backbone("aaclip-tiny", image_size=96).identity
    with pytest.raises(ck.CheckpointMismatchError, match="image_size: checkpoint 64 vs model 96"):
        ck.load_adapters(path, bigger)
    other = create_backbone("aaclip-tiny-8", image_size=64).identity
    with pytest.raises(ck.CheckpointMismatchError, match="name: checkpoint 'aaclip-tiny'"):
        ck.load_adapters(path, other)


def test_few_shot_training_uses_k_images_per_class(synthetic_root, tmp_path):
    cfg = small_config(synthetic_root, tmp_path, **{"train.shots": 2, "model.stage2_epochs": 1})
    tr.train(cfg, tmp_path / "run", progress=False)
    log = (tmp_path / "run/train_log.jsonl").read_text()
    assert log.count("\n") == 2
