"""MVFA-AD specifics: adapters and residual, text maps and det scores, det-only steps on
classification-only sets (seg adapters in the graph, left out of the step), the x11 recipe,
one-class batches, the memory bank through the contract, score rules, released-checkpoint
import and the medical protocol grid."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from aaclip import data, medical
from aaclip import train as tr
from aaclip.augment_x11 import augment_x11_batch, x11_variant
from aaclip.backbone import create_backbone
from aaclip.checkpoints import CheckpointMismatchError
from aaclip.config import apply_overrides, preset
from aaclip.evaluate import eval_sets, predict
from aaclip.methods import create_method
from aaclip.methods.base import ClassContext
from aaclip.methods.mvfa import MVFA, MVFAConfig, detection_score, text_probs

SIZE = 64
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model() -> MVFA:
    torch.manual_seed(0)
    backbone = create_backbone("aaclip-tiny", image_size=SIZE)
    torch.manual_seed(111)
    return MVFA(backbone, MVFAConfig()).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))


def mvfa_root(synthetic_root: Path) -> Path:
    return synthetic_root / "mvfa"


def test_adapters_mirror_the_released_layout(model):
    b = model.backbone
    assert model.levels == (1, 2, 3, 4)  # 1/4 .. 1 of the depth (6, 12, 18, 24 on ViT-L)
    state = model.adapter_state()
    assert len(state) == 16
    for group in ("seg_adapters", "det_adapters"):
        for k in range(4):
            assert state[f"{group}.{k}.fc1.0.weight"].shape == (b.embed_dim, b.vision_width)
            assert state[f"{group}.{k}.fc2.0.weight"].shape == (b.vision_width, b.embed_dim)
    assert not any("bias" in k for k in state)


def test_same_seed_same_adapters_in_release_order(model):
    torch.manual_seed(111)
    again = MVFA(model.backbone, MVFAConfig())
    for k, v in model.adapter_state().items():
        assert torch.equal(again.adapter_state()[k], v)
    torch.manual_seed(111)  # released order: 4 seg adapters (fc1, fc2 each), then 4 det
    first = torch.nn.Linear(model.backbone.vision_width, model.backbone.embed_dim, bias=False)
    assert torch.equal(first.weight, model.adapter_state()["seg_adapters.0.fc1.0.weight"])


def test_forward_is_the_released_residual_mix(model, images):
    """Hand-written forward: h = LeakyReLU(W1 x), y = LeakyReLU(W2 h), x <- .8x + .1y + .1y."""
    visual = model.clip.visual
    x = visual._embeds(images)
    want_seg, want_det = [], []
    with torch.no_grad():
        for i, block in enumerate(visual.transformer.resblocks):
            x = block(x)
            k = i  # every block is a level on the 4-block tiny model
            w = model.adapter_state()
            hs = F.leaky_relu(x @ w[f"seg_adapters.{k}.fc1.0.weight"].T, 0.01)
            hd = F.leaky_relu(x @ w[f"det_adapters.{k}.fc1.0.weight"].T, 0.01)
            ys = F.leaky_relu(hs @ w[f"seg_adapters.{k}.fc2.0.weight"].T, 0.01)
            yd = F.leaky_relu(hd @ w[f"det_adapters.{k}.fc2.0.weight"].T, 0.01)
            x = 0.8 * x + 0.1 * ys + 0.1 * yd
            want_seg.append(hs)
            want_det.append(hd)
        seg, det = model.encode_image(images)
    n = (SIZE // 8) ** 2 + 1
    assert all(t.shape == (3, n, model.backbone.embed_dim) for t in seg + det)
    for a, b in zip(seg + det, want_seg + want_det, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_text_map_softmax_after_upsampling_and_token_level_det_score(model, images):
    anchors = model.class_anchors("Brain", None)
    with torch.no_grad():
        seg, det = model.encode_image(images)
    tok = seg[0][:, 1:] / seg[0][:, 1:].norm(dim=-1, keepdim=True)
    logits = (100 * tok @ anchors).permute(0, 2, 1).reshape(3, 2, 8, 8)
    up = F.interpolate(logits, size=SIZE, mode="bilinear", align_corners=True)
    torch.testing.assert_close(text_probs(seg[0], anchors, SIZE, 100.0), up.softmax(1))
    softmax_then_up = F.interpolate(logits.softmax(1), size=SIZE, mode="bilinear")
    assert not torch.allclose(up.softmax(1), softmax_then_up, atol=1e-3)
    tokd = det[0][:, 1:] / det[0][:, 1:].norm(dim=-1, keepdim=True)
    want = (100 * tokd @ anchors).softmax(-1)[..., 1].mean(1)
    torch.testing.assert_close(detection_score(det[0], anchors, 100.0), want)


def test_prompt_ensemble_and_class_names(model):
    normal, abnormal = model.prompt_sentences(model.prompt_name("Chest"))
    assert len(normal) == 7 * 35 and len(abnormal) == 5 * 35
    assert normal[0] == "a bad photo of a Chest X-ray film."
    assert model.prompt_name("Retina_OCT2017") == model.prompt_name("Retina_RESC")
    a = model.class_anchors("Chest", None)
    assert a.shape == (model.backbone.embed_dim, 2)
    torch.testing.assert_close(a.norm(dim=0), torch.ones(2))
    with torch.no_grad():  # trimmed text encoding = CLIP's own encode_text
        tokens = model.backbone.tokenizer(normal[:20])
        from aaclip.methods.mvfa import encode_text_trimmed

        torch.testing.assert_close(
            encode_text_trimmed(model.clip, tokens),
            model.clip.encode_text(tokens),
            rtol=1e-5,
            atol=1e-5,
        )


def test_input_spec_without_clip_normalisation(model):
    spec = model.input_spec()
    assert spec.image_size == SIZE and spec.mean is None and spec.std is None
    clip = MVFA(model.backbone, MVFAConfig(normalize="clip")).input_spec()
    assert clip.mean is not None


@pytest.mark.parametrize(
    "key,value", [("det_bce", "sigmoid"), ("amp", "bf16"), ("protocol", "full")]
)
def test_bad_switch_is_one_line(model, key, value):
    with pytest.raises(ValueError, match=f"model.{key} must be one of") as exc:
        MVFA(model.backbone, MVFAConfig(**{key: value}))
    assert "\n" not in str(exc.value)


def _batch(images, has_masks: bool, labels=(0, 1, 1)) -> dict:
    masks = torch.zeros(3, 1, SIZE, SIZE)
    if has_masks:
        masks[1:, :, 10:30, 20:40] = 1
    return {
        "image": images,
        "mask": masks,
        "label": torch.tensor(labels),
        "class_name": ["Chest" if not has_masks else "Brain"] * 3,
        "class_has_masks": torch.tensor([has_masks] * 3),
    }


def test_classification_only_batch_updates_only_det_adapters(model, images):
    m = MVFA(model.backbone, MVFAConfig())
    m.load_adapter_state(model.adapter_state())
    stage = m.stages()[0]
    opt = tr.Optimiser.for_stage(m, stage)
    before = {k: v.clone() for k, v in m.adapter_state().items()}
    m.train()
    terms = tr.train_step(m, stage, _batch(images, has_masks=False), opt)
    assert set(terms) == {"loss", "detection"}
    after = m.adapter_state()
    for k in before:
        changed = not torch.equal(before[k], after[k])
        # det adapters move (but level-last fc2 feeds nothing scored: no gradient)
        assert changed == (k.startswith("det_") and not k.endswith("3.fc2.0.weight")), k
    terms = tr.train_step(m, stage, _batch(images, has_masks=True), opt)
    assert set(terms) == {"loss", "detection", "segmentation"}
    assert not torch.equal(
        before["seg_adapters.0.fc1.0.weight"], m.adapter_state()["seg_adapters.0.fc1.0.weight"]
    )


def _hand_det_loss(m: MVFA, images, labels, anchors, detach_seg: bool = False):
    """Hand-written det loss of the tiny model (every block a level), the seg adapters in the
    graph through 0.1 y_seg in the residual stream (`detach_seg`: cut there)."""
    x = m.clip.visual._embeds(images)
    loss = images.new_zeros(())
    for k, block in enumerate(m.clip.visual.transformer.resblocks):
        x = block(x)
        seg, det = m.seg_adapters[k], m.det_adapters[k]
        ys = F.leaky_relu(F.leaky_relu(x @ seg.fc1[0].weight.T, 0.01) @ seg.fc2[0].weight.T, 0.01)
        hd = F.leaky_relu(x @ det.fc1[0].weight.T, 0.01)
        yd = F.leaky_relu(hd @ det.fc2[0].weight.T, 0.01)
        x = 0.8 * x + 0.1 * (ys.detach() if detach_seg else ys) + 0.1 * yd
        tok = hd[:, 1:] / hd[:, 1:].norm(dim=-1, keepdim=True)
        s = (100 * tok @ anchors).softmax(dim=-1)[..., 1].mean(dim=-1)
        loss = loss + F.binary_cross_entropy_with_logits(s, labels)
    return loss


def test_classification_only_step_back_propagates_through_seg_adapters_but_skips_them(
    model, images
):
    """As released: the seg adapters stay in the det loss's graph (gradient flows through
    0.1 y_seg into the earlier levels) but only the det adapters are stepped."""
    m = MVFA(model.backbone, MVFAConfig())
    m.load_adapter_state(model.adapter_state())
    stage = m.stages()[0]
    opt = tr.Optimiser.for_stage(m, stage)
    batch = _batch(images, has_masks=False)
    assert m.skipped_groups(stage, batch) == (0,)
    assert m.skipped_groups(stage, _batch(images, has_masks=True)) == ()
    named = dict(m.adapters.named_parameters())
    before = {k: v.detach().clone() for k, v in named.items()}
    seen: dict[str, torch.Tensor] = {}  # gradients as backward left them, before the step
    hooks = [
        p.register_post_accumulate_grad_hook(lambda p, k=k: seen.__setitem__(k, p.grad.clone()))
        for k, p in named.items()
    ]
    m.train()
    tr.train_step(m, stage, batch, opt)
    for h in hooks:
        h.remove()

    # reference gradients: hand-written det loss, seg adapters left in the graph
    ref = MVFA(model.backbone, MVFAConfig())
    ref.load_adapter_state(model.adapter_state())
    anchors = ref.class_anchors("Chest", None)
    labels = batch["label"].float()
    params = dict(ref.adapters.named_parameters())
    keys = list(params)
    full = torch.autograd.grad(
        _hand_det_loss(ref, images, labels, anchors), list(params.values()), allow_unused=True
    )
    cut = torch.autograd.grad(
        _hand_det_loss(ref, images, labels, anchors, detach_seg=True),
        list(params.values()),
        allow_unused=True,
    )
    last = f".{len(m.levels) - 1}."
    for k, want, wrong in zip(keys, full, cut, strict=True):
        if (k.startswith("seg_") and last in k) or k.endswith(f"{last}fc2.0.weight"):
            # the last level's y (and so the last seg adapter) feeds nothing scored
            assert want is None and k not in seen, k
            continue
        torch.testing.assert_close(seen[k], want, rtol=1e-4, atol=1e-7)
        if k.startswith("seg_"):
            assert seen[k].abs().sum() > 0, k  # gradient through the det loss
            assert wrong is None, k
    # the first level's det gradient needs the seg path (the old detached graph differs)
    k = "det_adapters.0.fc1.0.weight"
    assert not torch.allclose(full[keys.index(k)], cut[keys.index(k)], rtol=1e-3, atol=0)

    # the step: seg adapters unchanged, no gradient kept, no Adam state; det adapters moved
    state = opt.optimizer.state
    for k, p in named.items():
        if k.startswith("seg_"):
            assert torch.equal(p.detach(), before[k]) and p.grad is None, k
            assert p not in state, k
        elif k in seen:
            assert not torch.equal(p.detach(), before[k]), k
            assert int(state[p]["step"]) == 1, k


def test_det_bce_switch(model, images):
    stage = model.stages()[0]
    batch = _batch(images, has_masks=False)
    with torch.no_grad():
        released = model.loss(stage, batch)["detection"]
        plain = MVFA(model.backbone, MVFAConfig(det_bce="probability"))
        plain.load_adapter_state(model.adapter_state())
        prob = plain.loss(stage, batch)["detection"]
        _, det = model.encode_image(images)
        a = model.class_anchors("Chest", None)
        s = [detection_score(t, a, 100.0) for t in det]
        y = batch["label"].float()
    torch.testing.assert_close(released, sum(F.binary_cross_entropy_with_logits(v, y) for v in s))
    torch.testing.assert_close(prob, sum(F.binary_cross_entropy(v, y) for v in s))


def test_schedule_per_protocol():
    few = MVFA.schedule(MVFAConfig())[0]
    zero = MVFA.schedule(MVFAConfig(protocol="zero_shot"))[0]
    assert (few.epochs, few.batch_size, few.lr, few.betas) == (50, 1, 1e-3, (0.5, 0.999))
    assert few.augment == "mvfa_x11" and zero.augment == "none"
    assert zero.lr == 1e-4 and few.one_class_per_batch and zero.one_class_per_batch


def test_x11_recipe_expands_every_record(synthetic_root):
    root = mvfa_root(synthetic_root) / "Brain_AD"
    records = data.load_records(root / "2-shot.jsonl")
    ds = data.RecordDataset(records, root, SIZE, "mvfa_x11", None, None)
    plain = data.RecordDataset(records, root, SIZE, "none", None, None)
    assert len(ds) == 11 * len(records) == 44
    anomalous = next(i for i, r in enumerate(records) if r.label == 1)
    base = plain[anomalous]
    for v in (0, 3, 7, 10):
        item = ds[11 * anomalous + v]
        img, mask = x11_variant(v, base["image"], base["mask"])
        assert torch.equal(item["image"], img) and torch.equal(item["mask"], mask)
        assert item["class_has_masks"] is True
    chest = mvfa_root(synthetic_root) / "Chest_AD"
    cds = data.RecordDataset(
        data.load_records(chest / "2-shot.jsonl", require_masks=False),
        chest,
        SIZE,
        "mvfa_x11",
        None,
        None,
    )
    assert cds[0]["class_has_masks"] is False and not cds[0]["mask"].any()


def test_one_class_batches_cover_every_item_once(synthetic_root):
    root = synthetic_root / "merged.jsonl"
    from aaclip.protocols import merge_records

    sets = [mvfa_root(synthetic_root) / f"{o}_AD" / "test.jsonl" for o in ("Brain", "Chest")]
    merge_records(sets, root)
    ds = data.RecordDataset(data.load_records(root, require_masks=False), root.parent, SIZE)
    batches = tr.class_batches(ds, 5, torch.Generator().manual_seed(0))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(ds)))
    assert all(len({ds.record(i).class_name for i in b}) == 1 for b in batches)
    assert sorted(len(b) for b in batches) == [1, 1, 5, 5, 5, 5, 5, 5]  # 16 per class
    again = tr.class_batches(ds, 5, torch.Generator().manual_seed(0))
    assert again == batches


def test_memory_bank_from_x11_supports_and_score_rules(model, images):
    normals = images[:2]
    anchors = model.class_anchors("Brain", None)
    seg_ctx = model.fit_memory(ClassContext("Brain", None, "medical", True, anchors), normals)
    n_tokens = (SIZE // 8) ** 2 + 1
    assert seg_ctx.memory.sizes() == [2 * 11 * n_tokens] * 4  # CLS included, x11
    aug, _ = augment_x11_batch(normals)
    with torch.no_grad():
        seg, det = model.encode_image(aug)
        test_seg, test_det = model.encode_image(images)
    torch.testing.assert_close(
        seg_ctx.memory.features[2], F.normalize(seg[2].flatten(0, 1), dim=-1)
    )
    cls_ctx = model.fit_memory(ClassContext("Chest", None, "medical", False, anchors), normals)
    torch.testing.assert_close(
        cls_ctx.memory.features[0], F.normalize(det[0].flatten(0, 1), dim=-1)
    )
    with torch.no_grad():
        pred_seg = model.predict(images, seg_ctx)
        pred_cls = model.predict(images, cls_ctx)
        pred_zero = model.predict(images, ClassContext("Brain", None, "medical", True, anchors))
    assert set(pred_seg.extra) == {"memory_map"} and set(pred_cls.extra) == {"memory_score"}
    assert pred_zero.extra == {}

    def mm(x):
        return (x - x.min()) / (x.max() - x.min())

    mem = seg_ctx.memory.anomaly_map(test_seg, SIZE)
    maps, scores = model.class_scores(pred_seg, seg_ctx)
    torch.testing.assert_close(maps, 0.5 * mm(pred_seg.maps) + 0.5 * mm(mem))
    torch.testing.assert_close(scores, maps.flatten(1).amax(1))
    _, scores = model.class_scores(pred_cls, cls_ctx)
    mem_det = cls_ctx.memory.anomaly_map(test_det, SIZE).flatten(1).mean(1)
    torch.testing.assert_close(scores, 0.5 * mm(pred_cls.scores) + 0.5 * mm(mem_det))
    maps, scores = model.class_scores(pred_zero, seg_ctx)
    torch.testing.assert_close(scores, mm(pred_zero.scores))
    # a batch-8 map equals one image at a time
    with torch.no_grad():
        alone = model.predict(images[1:2], seg_ctx)
    torch.testing.assert_close(alone.extra["memory_map"][0], pred_seg.extra["memory_map"][1])


def test_bank_rebuilt_after_each_few_shot_epoch(synthetic_root, tmp_path):
    cfg = preset("smoke", "mvfa", data_root=str(synthetic_root), shots=2)
    cfg = apply_overrides(cfg, [f"backbone.image_size={SIZE}", "model.epochs=1"])
    calls = []
    real = MVFA.after_epoch

    def spy(self, stage, dataset):
        real(self, stage, dataset)
        calls.append({k: v.sizes() for k, v in self.epoch_memory.items()})

    MVFA.after_epoch = spy
    try:
        tr.train(cfg, tmp_path / "run", progress=False)
    finally:
        MVFA.after_epoch = real
    n_tokens = (SIZE // 8) ** 2 + 1
    assert calls == [{"Brain": [2 * 11 * n_tokens] * 4}]


def test_pass_fits_memory_per_class_from_memory_records(synthetic_root):
    cfg = preset("smoke", "mvfa", data_root=str(synthetic_root), shots=2)
    cfg = apply_overrides(cfg, [f"backbone.image_size={SIZE}"])
    (ts,) = eval_sets(cfg)
    assert ts.memory_file == mvfa_root(synthetic_root) / "Brain_AD" / "2-shot.jsonl"
    assert [r.label for r in ts.memory()] == [0, 0]
    m = create_method(cfg)
    fitted = []
    real = m.fit_memory
    m.fit_memory = lambda ctx, x: fitted.append(x.shape) or real(ctx, x)
    records = ts.records()[:4] + ts.records()[-4:]
    out = predict(
        {"m": m},
        records,
        ts.root,
        dataset="Brain",
        domain="medical",
        progress=False,
        memory=ts.memory(),
        memory_root=ts.memory_file.parent,
    )
    assert fitted == [(2, 3, SIZE, SIZE)]
    pred = out["m"]["Brain"]
    assert pred.maps.shape == (8, SIZE, SIZE) and 0 <= pred.scores.min() <= pred.scores.max() <= 1
    with pytest.raises(data.RecordError, match="no normal image of class 'Brain'") as exc:
        predict(
            {"m": m},
            records,
            ts.root,
            dataset="Brain",
            domain="medical",
            progress=False,
            memory=[],
            memory_root=ts.root,
        )
    assert "\n" not in str(exc.value)
    bad = apply_overrides(cfg, ['data.memory_records=["a.jsonl", "b.jsonl"]'])
    with pytest.raises(ValueError, match="names 2 files for 1 test sets"):
        eval_sets(bad)


def _released_file(model: MVFA, path: Path) -> Path:
    state = model.adapter_state()
    blob = {
        g: {k.split(".", 1)[1]: v.clone() for k, v in state.items() if k.startswith(g)}
        for g in ("seg_adapters", "det_adapters")
    }
    torch.save(blob, path)
    return path


def test_released_checkpoint_import_and_refusals(model, tmp_path):
    other = MVFA(model.backbone, MVFAConfig())
    other.import_released(_released_file(model, tmp_path / "Brain.pth"))
    for k, v in model.adapter_state().items():
        assert torch.equal(other.adapter_state()[k], v)
    torch.save({"text_adapter": {}, "image_adapter": {}}, tmp_path / "aa.pth")
    with pytest.raises(CheckpointMismatchError, match="an AA-CLIP file: use --method aaclip"):
        other.import_released(tmp_path / "aa.pth")
    blob = torch.load(tmp_path / "Brain.pth", weights_only=True)
    blob["seg_adapters"]["0.fc1.0.weight"] = torch.zeros(768, 1024)
    torch.save(blob, tmp_path / "vitl.pth")
    with pytest.raises(CheckpointMismatchError, match=r"has shape \(768, 1024\)") as exc:
        other.import_released(tmp_path / "vitl.pth")
    assert "\n" not in str(exc.value) and "ViT-L-14-336" in str(exc.value)


def test_an_mvfa_file_given_to_aaclip_is_refused_by_name(model, tmp_path):
    from aaclip.methods.aaclip import AAClip, load_released

    path = _released_file(model, tmp_path / "Brain.pth")
    with pytest.raises(CheckpointMismatchError, match="MVFA-AD checkpoint.*--method mvfa"):
        load_released(AAClip(model.backbone), None, path)


def test_cli_import_released_then_test(model, synthetic_root, tmp_path):
    path = _released_file(model, tmp_path / "Brain.pth")
    out = tmp_path / "imported.safetensors"
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    over = [f"--set=backbone.image_size={SIZE}", "--profile=smoke"]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "aaclip.cli",
            "import-released",
            "--method",
            "mvfa",
            *over,
            "--released",
            str(path),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    from aaclip import checkpoints as ck

    tensors, meta = ck.load_adapters(out)
    assert meta["method"] == "mvfa" and meta["imported_from"] == [str(path)]
    assert torch.equal(
        tensors["det_adapters.2.fc1.0.weight"], model.adapter_state()["det_adapters.2.fc1.0.weight"]
    )
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "aaclip.cli",
            "import-released",
            "--method",
            "mvfa",
            *over,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--released" in bad.stderr


# --------------------------------------------------------------------------- protocol grid
def test_protocol_arguments_are_checked_in_one_line(synthetic_root):
    with pytest.raises(medical.ProtocolError, match=r"\[3\] not in the protocol's k"):
        medical.parse_shots("0,3")
    with pytest.raises(medical.ProtocolError, match="unknown set"):
        medical.parse_sets("Brain,Knee")
    root = mvfa_root(synthetic_root)
    with pytest.raises(medical.ProtocolError, match="Chest: a classification-only set") as e:
        medical.check_pixel_sets(root, ["Brain", "Chest"], ["Brain", "Chest"])
    assert "\n" not in str(e.value)
    medical.check_pixel_sets(root, ["Brain", "Chest"], ["Brain", "Liver"])


def test_records_where_the_converter_writes_them_by_default(tmp_path):
    from data_prep import mvfa as converter

    assert {s.obj: s.converted for s in medical.SETS if s.converted} == converter.PAPER_FOLDERS
    (tmp_path / "Retina").mkdir()
    (tmp_path / "Retina" / "test.jsonl").write_text("")
    found = medical._records_file(tmp_path, "Retina_RESC", "test.jsonl")
    assert found == tmp_path / "Retina" / "test.jsonl"


def test_leave_one_out_and_few_shot_run_configs(synthetic_root, tmp_path):
    root = mvfa_root(synthetic_root)
    zero = medical.run_config("mvfa", "smoke", root, "Liver", 0, tmp_path)
    assert zero.model.protocol == "zero_shot" and zero.data.memory_records == ()
    merged = data.load_records(zero.data.train_records, require_masks=False)
    assert {r.class_name for r in merged} == {s.obj for s in medical.SETS} - {"Liver"}
    assert len(merged) == 5 * 16
    few = medical.run_config("mvfa", "smoke", root, "Chest", 8, tmp_path, ["model.epochs=3"])
    assert few.model.protocol == "few_shot" and few.model.epochs == 3
    assert few.data.memory_records == (few.data.train_records,)
    assert few.data.train_records.endswith("Chest_AD/8-shot.jsonl")
    with pytest.raises(medical.ProtocolError, match="missing; convert the set"):
        medical.run_config("mvfa", "smoke", tmp_path, "Chest", 8, tmp_path)


def test_grid_table_beside_published_columns():
    rows = []
    for k in (0, 4):
        for s in medical.SETS:
            for metric in (*medical.HEADLINE, *medical.OTHER_METRICS):
                pixel = metric.startswith("pixel")
                v = float("nan") if pixel and not s.segmentation else 0.5 + k / 100
                rows.append(("mvfa", k, s.obj, metric, v, 1.0))
    long = pd.DataFrame(rows, columns=["method", "shots", "target", "metric", "value", "wall_s"])
    table = medical.grid_table(long, "MVFA-AD").set_index(["shots", "target"])
    assert len(table) == 14
    brain0 = table.loc[(0, "BrainMRI")]
    assert brain0["image_auroc paper"] == pytest.approx(0.7863)
    assert brain0["pixel_auroc implementation"] == pytest.approx(0.8968)
    assert table.loc[(4, "medical average"), "image_auroc paper"] == pytest.approx(0.8897)
    assert table.loc[(4, "medical average"), "pixel_auroc"] == pytest.approx(0.54)
    assert pd.isna(table.loc[(4, "HIS"), "pixel_auroc"])


def test_protocol_command_end_to_end(synthetic_root, tmp_path):
    out = tmp_path / "grid"
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    cmd = [
        sys.executable,
        "-m",
        "aaclip.cli",
        "protocol",
        "mvfa",
        "--method",
        "mvfa",
        "--shots",
        "0,2",
        "--sets",
        "Chest,Brain",
        "--data",
        str(mvfa_root(synthetic_root)),
        "--out",
        str(out),
        "--runs",
        str(tmp_path / "runs"),
        "--set",
        "model.epochs=1",
        "--set",
        "backbone.image_size=64",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    table = pd.read_csv(out / "table.csv")
    assert list(table["target"]) == ["ChestXray", "BrainMRI", "medical average"] * 2
    assert table["image_auroc"].between(0, 1).all()
    assert table["pixel_auroc"].isna().tolist() == [True, False, False] * 2
    md = (out / "table.md").read_text()
    assert "fixed epoch" in md and "test set" in md and "SMOKE PROFILE" in md
    grid = json.loads((out / "grid.json").read_text())
    assert grid["shots"] == [0, 2] and grid["sets"] == ["Chest", "Brain"]
    assert (tmp_path / "runs" / "Brain_0shot" / "config.json").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert again.returncode == 0 and pd.read_csv(out / "table.csv").equals(table)  # reused
