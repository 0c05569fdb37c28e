"""Contract tests over every registered method (as timm and anomalib test every model).

A new method registered in `aaclip.methods.METHODS` gets all of these without writing one:
shapes, class scores in [0, 1], a frozen backbone in eval mode, gradients that reach only the
trainable state, a state round trip with dtypes, exact resume after a kill, one pass over
several checkpoints equal to separate passes, and batch independence of the maps.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from aaclip import checkpoints as ck
from aaclip import data, runs
from aaclip import train as tr
from aaclip.config import apply_overrides, preset
from aaclip.evaluate import load_methods, predict
from aaclip.methods import METHODS, UnknownMethodError, create_method, list_methods, method_class

SIZE = 64
TRAINED = [m for m in list_methods() if METHODS[m].schedule(METHODS[m].Config())]


def small_config(method: str, root, tmp_path, n: int = 8, **over):
    """The method's smoke preset on an n-image subset of the synthetic training set."""
    records = data.load_records(root / "train.jsonl")
    half = n // 2
    picked = [r for r in records if r.label == 1][:half] + [r for r in records if r.label == 0][
        :half
    ]
    subset = root / f"contract_subset{n}.jsonl"  # records are relative to their folder
    data.write_records(subset, picked)
    cfg = preset("smoke", method, data_root=str(root))
    overrides = [
        f"data.train_records={subset}",
        f"backbone.image_size={SIZE}",
        "train.max_epochs=2",
    ]
    return apply_overrides(cfg, overrides + [f"{k}={v}" for k, v in over.items()])


@pytest.fixture(scope="module")
def batch(synthetic_root):
    records = [r for r in data.load_records(synthetic_root / "industrial_test.jsonl")][:3]
    ds = data.RecordDataset(records, synthetic_root, SIZE)
    return {k: (torch.stack([ds[i][k] for i in range(3)]) if k in ("image", "mask", "label")
                else [ds[i][k] for i in range(3)]) for k in ds[0]}  # fmt: skip


def fresh(method: str, root, tmp_path):
    cfg = small_config(method, root, tmp_path)
    return cfg, create_method(cfg, "cpu")


def test_registry_lists_and_refuses_unknown_names():
    assert {"clip", "aaclip"} <= set(list_methods())
    with pytest.raises(
        UnknownMethodError, match=r"unknown method 'nope'; registered: clip, aaclip"
    ):
        method_class("nope")
    with pytest.raises(ValueError, match="--method"):
        apply_overrides(preset("smoke"), ["method=clip"])


@pytest.mark.parametrize("name", list_methods())
def test_predict_shapes_and_class_scores_in_unit_range(name, synthetic_root, tmp_path, batch):
    _, m = fresh(name, synthetic_root, tmp_path)
    ctx = m.prepare_class("grass", "synthetic", "industrial")
    with torch.no_grad():
        pred = m.predict(batch["image"], ctx)
    assert pred.maps.shape == (3, SIZE, SIZE) and pred.scores.shape == (3,)
    maps, scores = m.class_scores(pred, ctx)
    assert maps.shape == (3, SIZE, SIZE) and scores.shape == (3,)
    for t in (maps, scores):
        assert torch.isfinite(t).all() and t.min() >= 0 and t.max() <= 1


@pytest.mark.parametrize("name", list_methods())
def test_backbone_frozen_and_in_eval_whatever_train_says(name, synthetic_root, tmp_path):
    _, m = fresh(name, synthetic_root, tmp_path)
    m.train()
    assert not m.clip.training and not any(p.requires_grad for p in m.clip.parameters())
    assert all(not k.startswith(("clip.", "backbone.")) for k in m.adapter_state())


@pytest.mark.parametrize("name", TRAINED)
def test_gradients_reach_only_the_stage_parameters(name, synthetic_root, tmp_path, batch):
    _, m = fresh(name, synthetic_root, tmp_path)
    m.train()
    for stage in m.stages():
        m.start_stage(stage, ["grass"], "synthetic")
        m.train()
        m.zero_grad(set_to_none=True)
        terms = m.loss(stage, {**batch, "class_name": ["grass"] * 3})
        assert terms and all(torch.isfinite(v) and v.dim() == 0 for v in terms.values())
        sum(terms.values()).backward()
        wanted = {id(p) for g in m.param_groups(stage) for p in g["params"]}
        trainable = {id(p) for p in m.adapters.parameters()}
        assert wanted and wanted <= trainable
        for p in m.parameters():
            if id(p) not in wanted:
                assert p.grad is None or not p.grad.any()
        assert any(p.grad is not None and p.grad.any() for p in m.adapters.parameters())


@pytest.mark.parametrize("name", list_methods())
def test_state_round_trip_keeps_values_and_dtypes(name, synthetic_root, tmp_path):
    cfg, m = fresh(name, synthetic_root, tmp_path)
    with torch.no_grad():
        for v in m.adapters.parameters():
            v.add_(torch.randn_like(v))
    path = tmp_path / "state.safetensors"
    ck.save_adapters(path, m.adapter_state(), {"method": name, "config": cfg.to_dict()})
    tensors, _ = ck.load_adapters(path, m.backbone.identity, name)
    other = create_method(cfg, "cpu", backbone=m.backbone)
    other.load_adapter_state(tensors, str(path))
    for k, v in m.adapter_state().items():
        assert other.adapter_state()[k].dtype == v.dtype and torch.equal(
            other.adapter_state()[k], v
        ), k


@pytest.mark.parametrize("name", TRAINED)
def test_a_killed_run_resumes_to_the_same_weights(name, synthetic_root, tmp_path, monkeypatch):
    cfg = small_config(name, synthetic_root, tmp_path)
    tr.train(cfg, tmp_path / "straight", progress=False)
    cls = method_class(name)
    real, calls = cls.loss, {"n": 0}

    def killed(self, stage, b):
        calls["n"] += 1
        if calls["n"] == 4:  # inside the second epoch of the first stage (2 steps per epoch)
            raise KeyboardInterrupt("simulated kill")
        return real(self, stage, b)

    monkeypatch.setattr(cls, "loss", killed)
    with pytest.raises(KeyboardInterrupt):
        tr.train(cfg, tmp_path / "crashed", progress=False)
    monkeypatch.setattr(cls, "loss", real)
    tr.train(cfg, tmp_path / "crashed", progress=False)
    stage, epochs = runs.last_stage(cfg)
    a, meta = ck.load_adapters(runs.checkpoint_path(tmp_path / "straight", stage, epochs))
    b, _ = ck.load_adapters(runs.checkpoint_path(tmp_path / "crashed", stage, epochs))
    assert meta["method"] == name and meta["stage_name"] == cls.schedule(cfg.model)[stage - 1].name
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", TRAINED)
def test_one_pass_over_checkpoints_equals_separate_passes(name, synthetic_root, tmp_path):
    cfg = small_config(name, synthetic_root, tmp_path)
    paths = []
    for seed in (1, 2):
        m = create_method(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed)))
        paths.append(tmp_path / f"seed{seed}.safetensors")
        ck.save_adapters(paths[-1], m.adapter_state(), {"method": name, "config": cfg.to_dict()})
    records = data.load_records(synthetic_root / "industrial_test.jsonl")[:6]
    kw = dict(dataset="synthetic", domain="industrial", batch_size=4, progress=False)
    together = predict(load_methods(cfg, paths, torch.device("cpu")), records, synthetic_root, **kw)
    for p in paths:
        alone = predict(load_methods(cfg, [p], torch.device("cpu")), records, synthetic_root, **kw)
        for cls_name, pred in alone[p.stem].items():
            joint = together[p.stem][cls_name]
            assert torch.equal(pred.maps, joint.maps) and torch.equal(pred.scores, joint.scores)


@pytest.mark.parametrize("name", list_methods())
def test_an_image_map_does_not_depend_on_its_batch(name, synthetic_root, tmp_path, batch):
    _, m = fresh(name, synthetic_root, tmp_path)
    if not m.batch_independent:
        pytest.skip(f"{name}: a released quirk (switch) mixes the images of a batch")
    ctx = m.prepare_class("grass", "synthetic", "industrial")
    with torch.no_grad():
        together = m.predict(batch["image"], ctx)
        alone = m.predict(batch["image"][1:2], ctx)
    torch.testing.assert_close(alone.maps[0], together.maps[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone.scores[0], together.scores[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TRAINED)
def test_a_checkpoint_of_another_method_is_refused_by_name(name, synthetic_root, tmp_path):
    cfg, m = fresh(name, synthetic_root, tmp_path)
    path = tmp_path / "other.safetensors"
    ck.save_adapters(path, m.adapter_state(), {"method": "someother", "config": {}})
    with pytest.raises(ck.CheckpointMismatchError, match=f"a someother checkpoint, not {name}"):
        load_methods(cfg, [path], torch.device("cpu"))
