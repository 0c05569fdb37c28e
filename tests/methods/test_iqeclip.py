"""IQE-CLIP beyond the contract: the text path read against the spec (seed-methods.md §6),
the query module's shapes and names, the released crashes that must not happen here, the
scipy-equal blur, the dropout schedule, optimiser groups, presets and release-format files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from aaclip import data, evaluate
from aaclip.backbone import create_backbone
from aaclip.checkpoints import CheckpointMismatchError
from aaclip.config import preset
from aaclip.methods import create_method
from aaclip.methods.base import ClassContext
from aaclip.methods.iqeclip import IQEClip, IQEClipConfig, QueryModule, gaussian_blur
from aaclip.methods.iqeclip import load_released as load_release_file
from aaclip.methods.iqeclip.method import insert_prompt, splice_class_tokens, strip_prompt

SIZE = 64
SOS, EOT = 49406, 49407
# "a photo of a normal <|class|>." in CLIP's BPE: `<|class|>` is five ordinary tokens
NORMAL_IDS = [SOS, 320, 1125, 539, 320, 5967, 27, 347, 1874, 91, 29, 269, EOT]
ABNORMAL_IDS = [SOS, 320, 1125, 539, 320, 40934, 27, 347, 1874, 91, 29, 269, EOT]


@pytest.fixture(scope="module")
def model(tiny_clip) -> IQEClip:
    torch.manual_seed(0)
    m = IQEClip(tiny_clip, IQEClipConfig()).eval()
    with torch.no_grad():  # no LayerNorm left at 1/0: a missing affine shows
        for name, p in m.adapters.named_parameters():
            if "norm" in name.lower():
                p.add_(0.1 * torch.randn_like(p))
    return m


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- text path
def test_templates_tokenise_as_the_release_with_eot_at_12(model):
    tokens = model.template_tokens
    assert tokens[0, :13].tolist() == NORMAL_IDS and tokens[1, :13].tolist() == ABNORMAL_IDS
    assert not tokens[:, 13:].any() and model.eot == [12, 12]


def test_class_tokens_replace_the_eot_and_the_sequence_is_cut_to_77():
    # symbolic embeddings: each position carries its token id, class tokens carry -1, -2
    ids = torch.tensor([NORMAL_IDS + [0] * 64, ABNORMAL_IDS + [0] * 64], dtype=torch.float32)
    classes = torch.tensor([[-1.0], [-2.0]]).expand(3, 2, 1)  # 3 images, r = 2
    out = splice_class_tokens(ids.unsqueeze(-1), [12, 12], classes)
    assert out.shape == (3, 2, 77, 1)
    spec = NORMAL_IDS[:12] + [-1, -2] + [0] * 63  # [SOS ... "." C1 C2 pad x 63], no EOT
    assert out[2, 0, :, 0].tolist() == spec
    assert out[0, 1, :, 0].tolist() == ABNORMAL_IDS[:12] + [-1, -2] + [0] * 63


def test_prompt_insert_after_sos_drops_the_last_tokens_and_strip_undoes_it():
    x = torch.arange(77.0).view(1, 77, 1)
    s = torch.tensor([[-5.0]])
    y = insert_prompt(x, s)
    assert y[0, :, 0].tolist() == [0, -5] + list(range(1, 76))
    assert strip_prompt(y, 1)[0, :, 0].tolist() == [0] + list(range(1, 76))


def _block_inputs(model, class_tokens):
    """Inputs and outputs of every text block during encode_text."""
    seen = {"in": [], "out": []}
    blocks = model.clip.transformer.resblocks
    hooks = [b.register_forward_pre_hook(lambda m, a: seen["in"].append(a[0])) for b in blocks]
    hooks += [b.register_forward_hook(lambda m, a, o: seen["out"].append(o)) for b in blocks]
    try:
        feats = model.encode_text(class_tokens)
    finally:
        for h in hooks:
            h.remove()
    return feats, seen


@torch.no_grad()
def test_text_input_layout_positions_and_shallow_prompt(model):
    clip, a = model.clip, model.adapters
    class_tokens = torch.randn(2, 2, 64, generator=torch.Generator().manual_seed(3))
    _, seen = _block_inputs(model, class_tokens)
    x = seen["in"][0]  # (2 images x 2 templates, 77, W), image-major
    assert x.shape == (4, 77, 64)
    pos, emb = clip.positional_embedding, clip.token_embedding.weight
    shallow = a["prompt_proj"](a.prompt_embeddings[0, 0])
    for row, (img, tpl) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        ids = (NORMAL_IDS, ABNORMAL_IDS)[tpl]
        torch.testing.assert_close(x[row, 0], emb[SOS] + pos[0])  # SOS keeps position 0
        torch.testing.assert_close(x[row, 1], shallow)  # the prompt gets no position
        for k in range(1, 12):  # "a photo of a (ab)normal < | class | > ." shifted by one
            torch.testing.assert_close(x[row, k + 1], emb[ids[k]] + pos[k])
        torch.testing.assert_close(x[row, 13], class_tokens[img, 0] + pos[12])  # C1 at 12
        torch.testing.assert_close(x[row, 14], class_tokens[img, 1] + pos[13])  # C2 at 13
        torch.testing.assert_close(x[row, 15], emb[0] + pos[14])  # padding follows
        torch.testing.assert_close(x[row, 76], emb[0] + pos[75])  # pos 76 was dropped


@torch.no_grad()
def test_deep_prompts_replace_position_1_before_blocks_2_to_12(model):
    a = model.adapters
    class_tokens = torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(4))
    _, seen = _block_inputs(model, class_tokens)
    depth = len(model.clip.transformer.resblocks)
    assert a.deep_prompt_embeddings.shape == (depth - 1, 1, 64)  # 11 on the 12-block tower
    for i in range(1, depth):  # 0-based block i = 1-based block i + 1
        x_in, prev_out = seen["in"][i], seen["out"][i - 1]
        deep = a["prompt_proj"](a.deep_prompt_embeddings[i - 1, 0])  # the shared projection
        torch.testing.assert_close(x_in[:, 1], deep.expand(2, -1))
        torch.testing.assert_close(x_in[:, [0, *range(2, 77)]], prev_out[:, [0, *range(2, 77)]])


@torch.no_grad()
def test_read_out_at_the_last_class_token_after_prompt_norm_and_ln_final(model):
    clip, a = model.clip, model.adapters
    class_tokens = torch.randn(2, 2, 64, generator=torch.Generator().manual_seed(5))
    feats, seen = _block_inputs(model, class_tokens)
    last = seen["out"][-1]  # (4, 77, W) with the prompt still at 1
    # index EOT + r - 1 = 13 of the stripped sequence = 14 of the unstripped one: C2
    x = clip.ln_final(a["prompt_norm"](last[:, 14])) @ clip.text_projection
    expected = torch.nn.functional.normalize(x, dim=-1).view(2, 2, -1)
    torch.testing.assert_close(feats, expected)
    assert feats.shape == (2, 2, 64)


@torch.no_grad()
def test_use_global_switch_conditions_class_tokens_and_queries(tiny_clip):
    x = images(2)
    for use_global in (True, False):
        torch.manual_seed(0)
        m = IQEClip(tiny_clip, IQEClipConfig(use_global=use_global)).eval()
        out = m.forward_features(x)
        same = torch.allclose(out.text[0], out.text[1]) and torch.allclose(
            out.queries_in[0], out.queries_in[1]
        )
        assert same != use_global


# ----------------------------------------------------------------------------- query module
def test_query_module_names_shapes_and_release_parameter_count():
    iqm = QueryModule(768)
    state = iqm.state_dict()
    assert len(state) == 146 and sum(v.numel() for v in state.values()) == 47_264_256
    for key in (
        "layernorm.weight",
        "encoder.layer.3.attention.attention.query.weight",
        "encoder.layer.0.crossattention.output.LayerNorm.bias",
        "encoder.layer.2.text_crossattention.attention.value.bias",
        "encoder.layer.1.intermediate_query.dense.weight",
        "encoder.layer.1.output_query.dense.weight",
    ):
        assert key in state, key
    assert state["encoder.layer.1.output_query.dense.weight"].shape == (768, 3072)


def test_query_module_is_per_sample_and_sees_both_contexts():
    torch.manual_seed(0)
    iqm = QueryModule(32, layers=2, heads=4).eval()
    q, f, t = torch.randn(3, 2, 32), torch.randn(3, 10, 32), torch.randn(3, 2, 32)
    out = iqm(q, f, t)
    assert out.shape == (3, 2, 32)
    torch.testing.assert_close(iqm(q[1:2], f[1:2], t[1:2])[0], out[1])
    assert not torch.allclose(iqm(q, f, t + 1), out)
    assert not torch.allclose(iqm(q, f + 1, t), out)
    # no position embedding: the order of patch tokens and text features does not matter
    torch.testing.assert_close(iqm(q, f.flip(1), t.flip(1)), out)


# ----------------------------------------------------------------------------- maps
@pytest.mark.parametrize(("sigma", "shape"), [(8.0, (2, 70, 50)), (2.0, (1, 9, 13))])
def test_blur_equals_scipy_gaussian_filter_in_reflect_mode(sigma, shape):
    from scipy.ndimage import gaussian_filter

    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    expected = gaussian_filter(x, sigma=sigma, axes=(1, 2))  # radius 32 > 9: repeated reflection
    got = gaussian_blur(torch.from_numpy(x), sigma).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_score_rules_of_both_protocols(model):
    ctx = ClassContext("x", None, "medical")
    pred = model.predict(images(3), ctx)
    assert torch.equal(pred.scores, pred.extra["score_tokens"])
    assert pred.scores.shape == (3,) and pred.maps.shape == (3, SIZE, SIZE)
    out = model.forward_features(images(3))
    raw, new = model.level_mean_maps(out, SIZE)
    torch.testing.assert_close(pred.extra["score_pixels"], raw.mean((1, 2)) + new.mean((1, 2)))
    blend = gaussian_blur(0.2 * raw + 0.8 * new, 8.0)
    torch.testing.assert_close(pred.maps, blend)
    model.cfg.protocol = "few"
    try:
        few = model.predict(images(3), ctx)
    finally:
        model.cfg.protocol = "zero"
    assert torch.equal(few.scores, pred.extra["score_pixels"])


# ----------------------------------------------------------------------------- bad inputs
def _records(root, name: str, n: int, drop_masks: bool = False):
    picked = [r for r in data.load_records(root / "medical_test.jsonl") if r.class_name == "cell"]
    picked = picked[: n // 2] + picked[-(n - n // 2) :]
    if drop_masks:  # a classification-only set: anomalies without masks
        picked = [dataclasses.replace(r, mask_path=None) for r in picked]
    data.write_records(root / name, picked)
    return data.load_records(root / name, require_masks=False)


@pytest.mark.parametrize(("n", "batch"), [(5, 4), (4, 1)])
def test_a_last_batch_of_one_and_a_test_batch_of_one_work(synthetic_root, model, n, batch):
    records = _records(synthetic_root, f"iqe_last_batch_{n}.jsonl", n)
    out = evaluate.predict({"m": model}, records, synthetic_root, dataset="x", domain="medical",
                           batch_size=batch, progress=False)["m"]["cell"]  # fmt: skip
    assert out.maps.shape == (n, SIZE, SIZE) and out.scores.shape == (n,)
    assert torch.isfinite(out.maps).all() and torch.isfinite(out.scores).all()
    row = evaluate.class_metrics(out, aupro=False)
    assert 0 <= row["image_auroc"] <= 1 and 0 <= row["pixel_auroc"] <= 1


def test_a_classification_only_set_gets_image_metrics_and_missing_pixel_metrics(
    synthetic_root, model
):
    records = _records(synthetic_root, "iqe_classification_only.jsonl", 6, drop_masks=True)
    out = evaluate.predict({"m": model}, records, synthetic_root, dataset="x", domain="medical",
                           batch_size=4, progress=False)["m"]["cell"]  # fmt: skip
    assert not out.has_masks
    row = evaluate.class_metrics(out, aupro=False)
    assert 0 <= row["image_auroc"] <= 1 and np.isnan(row["pixel_auroc"])


def _batch(n: int, classes: list[str], has_mask: list[bool]) -> dict:
    masks = torch.zeros(n, 1, SIZE, SIZE)
    labels = torch.tensor([int(h) for h in has_mask])
    masks[labels == 1, :, 10:30, 20:40] = 1
    return {"image": images(n), "mask": masks, "label": labels, "class_name": classes,
            "has_mask": torch.tensor(has_mask)}  # fmt: skip


def test_training_batch_of_one_image(tiny_clip):
    m = IQEClip(tiny_clip).train()
    terms = m.loss(m.stages()[0], _batch(1, ["Brain"], [True]))
    assert set(terms) == {"detection", "segmentation_new", "segmentation_raw"}
    assert all(v.dim() == 0 and torch.isfinite(v) and v > 0 for v in terms.values())
    sum(terms.values()).backward()


def test_classification_only_images_get_the_detection_loss_only(tiny_clip):
    m = IQEClip(tiny_clip).train()
    stage = m.stages()[0]
    cls_only = _batch(2, ["Chest", "Chest"], [False, False])
    cls_only["label"] = torch.tensor([0, 1])  # an anomaly without a mask
    terms = m.loss(stage, cls_only)
    assert terms["detection"] > 0
    assert terms["segmentation_new"] == 0 and terms["segmentation_raw"] == 0
    mixed = _batch(3, ["Chest", "Brain", "Brain"], [False, True, False])
    assert m.segmentation_rows(mixed).tolist() == [False, True, True]  # normals included
    unmasked = _batch(2, ["Brain", "Brain"], [False, False])
    unmasked["label"] = torch.tensor([1, 0])
    assert m.segmentation_rows(unmasked).tolist() == [False, True]


@torch.no_grad()
def test_det_bce_switch_is_bce_with_logits_on_the_token_probability(model):
    from aaclip.methods.iqeclip.method import token_score

    b = _batch(2, ["Brain", "Brain"], [False, True])
    out = model.forward_features(b["image"])
    s = [token_score(x) for x in out.new_logits + out.raw_logits]
    y = b["label"].float()
    f = torch.nn.functional
    released = sum(f.binary_cross_entropy_with_logits(x, y) for x in s)  # double sigmoid
    torch.testing.assert_close(model.loss(None, b)["detection"], released)
    model.cfg.det_bce = "probability"
    try:
        plain = model.loss(None, b)["detection"]
    finally:
        model.cfg.det_bce = "logits_on_probability"
    torch.testing.assert_close(plain, sum(f.binary_cross_entropy(x, y) for x in s))


# ----------------------------------------------------------------------------- training set-up
def _dropout_modes(m: IQEClip) -> set[bool]:
    return {d.training for d in m.adapters.modules() if isinstance(d, torch.nn.Dropout)}


@pytest.mark.parametrize(
    ("protocol", "after_eval", "epoch1", "epoch2"),
    [("zero", False, {False}, {False}), ("few", False, {True}, {False}),
     ("zero", True, {True}, {True}), ("few", True, {True}, {True})],
)  # fmt: skip
def test_dropout_follows_the_released_test_schedule(
    tiny_clip, protocol, after_eval, epoch1, epoch2
):
    m = IQEClip(tiny_clip, IQEClipConfig(protocol=protocol, dropout_after_eval=after_eval))
    stage = m.stages()[0]
    m.train()
    m.start_epoch(stage, 1)
    assert _dropout_modes(m) == epoch1
    m.start_epoch(stage, 2)
    assert _dropout_modes(m) == epoch2
    m.eval()
    assert _dropout_modes(m) == {False}


def test_param_groups_give_the_temperature_its_own_lr(tiny_clip):
    m = IQEClip(tiny_clip)
    groups = m.param_groups(m.stages()[0])
    temp = m.adapters["New_Lan_Embed"].prompt_temp
    assert groups[1] == {"params": [temp], "lr": 0.01}
    assert temp.item() == pytest.approx(np.log(1 / 0.07))
    named = {id(p): n for n, p in m.adapters.named_parameters()}
    in_rest = {named[id(p)] for p in groups[0]["params"]}
    assert in_rest | {"New_Lan_Embed.prompt_temp", "prompt_text_projection"} == set(named.values())
    off = IQEClip(tiny_clip, IQEClipConfig(use_global=False))  # DDP: no unused grad tensors
    off_named = {id(p): n for n, p in off.adapters.named_parameters()}
    kept = {off_named[id(p)] for p in off.param_groups(off.stages()[0])[0]["params"]}
    assert not any(k.startswith(("query_linear", "New_Lan_Embed.prompt_linear1")) for k in kept)


def test_ablations_flip_each_released_switch():
    from aaclip.methods import method_class

    cfg = preset("smoke", "iqeclip").model
    abl = method_class("iqeclip").ablations(cfg)
    assert abl["use_global_false"] == ["model.use_global=false"]
    assert abl["det_bce_probability"] == ["model.det_bce=probability"]
    assert set(abl) == {"use_global_false", "dropout_after_eval_true", "det_bce_probability",
                        "normalize_clip", "quick_gelu"}  # fmt: skip


def test_import_released_and_grad_scaler_hooks(tiny_clip, tmp_path):
    m = IQEClip(tiny_clip, IQEClipConfig(amp="fp16_scaler"))
    assert m.grad_scaler() is None  # CPU: fp32, no scaler
    (tmp_path / "x.pth").write_bytes(b"")
    torch.save({"seg_adapters": {}}, tmp_path / "x.pth")
    with pytest.raises(CheckpointMismatchError, match="no 'iqm' entry"):
        m.import_released(tmp_path / "x.pth")


def test_invalid_switch_values_are_refused(tiny_clip):
    with pytest.raises(ValueError, match="model.amp must be one of"):
        IQEClip(tiny_clip, IQEClipConfig(amp="fp16"))


def test_input_spec_is_unnormalised_by_default(tiny_clip):
    spec = IQEClip(tiny_clip).input_spec()
    assert spec.image_size == SIZE and spec.mean is None and spec.std is None
    assert IQEClip(tiny_clip, IQEClipConfig(normalize="clip")).input_spec().mean is not None


def test_presets():
    zero = preset("paper", "iqeclip", data_root="/d", target="Liver")
    assert zero.backbone.image_size == 240 and zero.backbone.require_weights
    assert zero.data.test_records == ("/d/Liver_AD/test.jsonl",)
    assert zero.data.train_records == "/d/leave_one_out/Liver.jsonl"
    (stage,) = IQEClip.schedule(zero.model)
    assert (zero.model.protocol, stage.epochs, stage.batch_size, stage.augment) == (
        "zero", 50, 128, "none")  # fmt: skip
    assert stage.one_class_per_batch and stage.lr == 1e-4  # a batch = one source set
    few = preset("paper", "iqeclip", data_root="/d", target="Chest", shots=4)
    assert few.data.train_records == "/d/Chest_AD/4-shot.jsonl"
    (stage,) = IQEClip.schedule(few.model)
    assert (few.model.protocol, stage.epochs, stage.batch_size, stage.augment) == (
        "few", 10, 32, "mvfa_x11")  # fmt: skip
    assert IQEClip.PROTOCOLS["few_shot"] == ["model.protocol=few"] and not IQEClip.needs_masks
    assert zero.train.seed == few.train.seed == 42
    with pytest.raises(ValueError, match="unknown MVFA set"):
        preset("paper", "iqeclip", target="Colon")
    smoke = preset("smoke", "iqeclip")
    assert smoke.data.test_domains == ("medical",) and smoke.model.use_global


# ----------------------------------------------------------------------------- release files
def test_release_format_file_loads_without_a_key_map(tiny_clip, tmp_path):
    torch.manual_seed(1)
    src = IQEClip(tiny_clip)
    state = src.adapter_state()
    blob: dict = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in ("trainable_linearlayer", "New_Lan_Embed", "iqm", "query_linear"):
            blob.setdefault(head, {})[rest] = value
        else:  # query_tokens and the text prompt* tensors sit at the top level
            blob[key] = torch.nn.Parameter(value.clone()) if key == "query_tokens" else value
    torch.save(blob, tmp_path / "Brain.pth")
    torch.manual_seed(2)
    dst = IQEClip(tiny_clip)
    load_release_file(dst, tmp_path / "Brain.pth")
    assert all(torch.equal(dst.adapter_state()[k], v) for k, v in state.items())
    del blob["iqm"]["layernorm.bias"]
    torch.save(blob, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError, match="missing"):
        load_release_file(dst, tmp_path / "bad.pth")


def test_sizes_follow_the_backbone():
    b = create_backbone("aaclip-tiny-8", image_size=SIZE)  # 8 vision blocks, width 48
    m = IQEClip(b)
    assert m.levels == (2, 4, 6, 8) and m.adapters.deep_prompt_embeddings.shape == (3, 1, 48)
    assert m.adapters["trainable_linearlayer"].fc[0].in_features == 48


def test_create_method_builds_it_from_the_smoke_preset(synthetic_root):
    m = create_method(preset("smoke", "iqeclip", data_root=str(synthetic_root)))
    assert isinstance(m, IQEClip) and not m.training
