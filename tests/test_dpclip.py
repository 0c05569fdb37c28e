"""DP-CLIP: GRN, the momentum decoupling loss and its prototype state, the released switches,
the released-checkpoint importer and the refusals between AA-CLIP and DP-CLIP files."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from aaclip import checkpoints as ck
from aaclip import cli, losses
from aaclip.adapters import GlobalResponseNorm, global_response_norm, momentum_update
from aaclip.config import apply_overrides, preset
from aaclip.evaluate import load_methods
from aaclip.methods import create_method
from aaclip.methods.aaclip import AAClip, AAClipConfig
from aaclip.methods.aaclip import load_released as load_released_aaclip
from aaclip.methods.dpclip import DPClip, DPClipConfig, load_released

SIZE = 64  # tiny backbone, patch 8: an 8 x 8 token grid


@pytest.fixture
def model(tiny_clip):
    torch.manual_seed(0)
    return DPClip(tiny_clip, DPClipConfig(class_descriptions="plain")).eval()


def make(tiny_clip, **kw) -> DPClip:
    torch.manual_seed(0)
    return DPClip(tiny_clip, DPClipConfig(class_descriptions="plain", **kw)).eval()


def batch(masks: list[tuple[int, int, int, int] | None], seed: int = 1) -> dict:
    """Images with one rectangular defect each (y0, y1, x0, x1 in pixels) or none."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(len(masks), 3, SIZE, SIZE, generator=g)
    m = torch.zeros(len(masks), 1, SIZE, SIZE)
    for i, box in enumerate(masks):
        if box is not None:
            y0, y1, x0, x1 = box
            m[i, 0, y0:y1, x0:x1] = 1
    labels = torch.tensor([int(b is not None) for b in masks])
    return {"image": images, "mask": m, "label": labels, "class_name": ["brick"] * len(masks)}


def train_loss(method: DPClip, b: dict) -> dict[str, torch.Tensor]:
    stage = method.stages()[0]
    method.start_stage(stage, ["brick"], None)
    method.train()
    return method.loss(stage, b)


# --------------------------------------------------------------------------- GRN
def grn_by_hand(x, gamma, beta, axis: str, eps: float = 1e-6):
    """The GRN formula read off element by element (no broadcasting tricks)."""
    b, n, c = x.shape
    out = torch.empty_like(x)
    for i in range(b):
        for t in range(n):
            if axis == "tokens":  # norm over the tokens of image i, per channel
                g = [sum(x[i, s, k] ** 2 for s in range(n)) ** 0.5 for k in range(c)]
            else:  # norm over the images of the batch at token t, per channel
                g = [sum(x[j, t, k] ** 2 for j in range(b)) ** 0.5 for k in range(c)]
            mean_g = sum(g) / c
            for k in range(c):
                nk = g[k] / (mean_g + eps)
                out[i, t, k] = x[i, t, k] + beta[k] + gamma[k] * (x[i, t, k] * nk)
    return out


@pytest.mark.parametrize("axis", ["tokens", "batch"])
def test_grn_matches_the_formula_read_element_by_element(axis):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    gamma, beta = torch.randn(4, generator=g).double(), torch.randn(4, generator=g).double()
    dim = 1 if axis == "tokens" else 0
    torch.testing.assert_close(
        global_response_norm(x, gamma, beta, dim), grn_by_hand(x, gamma, beta, axis)
    )
    module = GlobalResponseNorm(4, axis).double()
    torch.testing.assert_close(module(x), x)  # gamma = beta = 0 at init: the identity
    with torch.no_grad():
        module.weight.copy_(gamma)
        module.bias.copy_(beta)
    torch.testing.assert_close(module(x), grn_by_hand(x, gamma, beta, axis))
    alone = module(x[1:2])
    mixed = not torch.allclose(alone[0], module(x)[1])
    assert mixed == (axis == "batch")  # only the released batch axis mixes the images


def test_grn_refuses_an_unknown_axis():
    with pytest.raises(ValueError, match="GRN axis"):
        GlobalResponseNorm(4, "channels")


# --------------------------------------------------------------------------- decoupling
def test_token_mask_is_nearest_top_left_pixel_per_patch(model):
    masks = torch.zeros(1, 1, SIZE, SIZE)
    masks[0, 0, 8:16, 0:8] = 1  # exactly token (1, 0)
    masks[0, 0, 0, 24] = 1  # the top-left pixel of token (0, 3)
    masks[0, 0, 40:47, 41:48] = 1  # token (5, 5) except its top-left pixel
    got = model.token_mask(masks, 64).view(8, 8)
    want = torch.zeros(8, 8, dtype=torch.bool)
    want[1, 0] = want[0, 3] = True
    assert torch.equal(got, want)


def test_first_anomalous_batch_initialises_the_shared_pair_at_the_first_level(tiny_clip):
    m = make(tiny_clip)
    b = batch([(8, 40, 16, 48), None])
    terms = train_loss(m, b)
    seg, _ = m.encode_image(b["image"])
    abnormal = m.token_mask(b["mask"], seg[0].shape[1])
    a0, n0 = losses.token_prototypes(seg[0], abnormal)
    want = (a0 @ n0) ** 2  # level 1 initialises the pair ...
    for f in seg[1:]:  # ... and the later levels of the same batch already use it
        a, n = losses.token_prototypes(f, abnormal)
        want = want + ((a @ n0) ** 2 + (n @ a0) ** 2) / 2
    torch.testing.assert_close(terms["decoupling"], 0.1 * want)
    p = m.prototypes
    assert p.ready.tolist() == [True]
    torch.testing.assert_close(p.abnormal[0], a0.detach())
    torch.testing.assert_close(p.last_abnormal[0], a.detach())  # the last level's means


def test_momentum_update_after_the_step(tiny_clip):
    m = make(tiny_clip)
    train_loss(m, batch([(8, 40, 16, 48), None]))
    p = m.prototypes
    before_a, before_n = p.abnormal.clone(), p.normal.clone()
    m.after_step(m.stages()[0])
    want_a = F.normalize(0.999 * before_a[0] + 0.001 * p.last_abnormal[0], dim=0)
    torch.testing.assert_close(p.abnormal[0], want_a)
    torch.testing.assert_close(p.normal[0], momentum_update(before_n[0], p.last_normal[0], 0.999))
    assert p.abnormal[0].norm().item() == pytest.approx(1.0, abs=1e-6)


def test_per_level_prototypes_each_start_from_their_own_level(tiny_clip):
    m = make(tiny_clip, prototype_scope="per_level")
    b = batch([(8, 40, 16, 48), None])
    terms = train_loss(m, b)
    seg, _ = m.encode_image(b["image"])
    abnormal = m.token_mask(b["mask"], seg[0].shape[1])
    means = [losses.token_prototypes(f, abnormal) for f in seg]
    want = sum((a @ n) ** 2 for a, n in means)
    torch.testing.assert_close(terms["decoupling"], 0.1 * want)
    assert m.prototypes.ready.tolist() == [True] * len(m.levels)
    torch.testing.assert_close(m.prototypes.abnormal[2], means[2][0].detach())


@pytest.mark.parametrize("rule", ["reuse", "skip"])
def test_a_batch_without_anomalous_pixels_follows_the_switch_and_is_never_nan(tiny_clip, rule):
    m = make(tiny_clip, stale_prototype_update=rule)
    stage = m.stages()[0]
    clean = batch([None, None], seed=3)
    terms = train_loss(m, clean)  # before any anomaly: nothing to initialise, no term
    m.after_step(stage)
    assert terms["decoupling"].item() == 0.0 and not m.prototypes.ready.any()
    train_loss(m, batch([(8, 40, 16, 48), None]))
    m.after_step(stage)
    p = m.prototypes
    before = p.abnormal.clone()
    terms = train_loss(m, clean)
    m.after_step(stage)
    assert terms["decoupling"].item() == 0.0
    assert all(torch.isfinite(t).all() for t in m.adapter_state().values() if t.is_floating_point())
    if rule == "skip":
        assert torch.equal(p.abnormal, before)
    else:  # released: the previous batch's means are applied again
        torch.testing.assert_close(
            p.abnormal[0], momentum_update(before[0], p.last_abnormal[0], 0.999)
        )
        assert not torch.equal(p.abnormal, before)


def test_an_all_anomalous_batch_adds_no_term(tiny_clip):
    m = make(tiny_clip)
    terms = train_loss(m, batch([(0, SIZE, 0, SIZE)]))
    assert terms["decoupling"].item() == 0.0 and not m.prototypes.ready.any()


def test_no_decoupling_weight_keeps_the_prototypes_unset(tiny_clip):
    m = make(tiny_clip, decoupling_weight=0.0)
    terms = train_loss(m, batch([(8, 40, 16, 48), None]))
    m.after_step(m.stages()[0])
    assert terms["decoupling"].item() == 0.0 and not m.prototypes.ready.any()


def test_prototypes_are_part_of_the_checkpointed_state(model):
    state = model.adapter_state()
    assert {"prototypes.abnormal", "prototypes.normal", "prototypes.ready"} <= set(state)
    assert state["prototypes.ready"].dtype == torch.bool
    assert not any(k.startswith("image_adapter") and "prototype" in k for k in state)


# --------------------------------------------------------------------------- switches
def test_released_grid_37_is_refused_where_it_does_not_fit(tiny_clip):
    m = make(tiny_clip, decoupling_grid=37)
    with pytest.raises(ValueError, match="decoupling_grid=37 does not fit the 8x8"):
        train_loss(m, batch([(8, 40, 16, 48), None]))


def test_unknown_switch_values_are_refused(tiny_clip):
    with pytest.raises(ValueError, match="model.grn_axis must be one of"):
        make(tiny_clip, grn_axis="channels")


def test_batch_axis_groups_test_images_and_warns(tiny_clip):
    m = make(tiny_clip, grn_axis="batch", grn_test_batch=2)
    assert not m.batch_independent and make(tiny_clip).batch_independent
    with torch.no_grad():
        for ad in m.image_adapter["layer_adapters"]:
            ad.grn.weight.normal_()
    with pytest.warns(UserWarning, match="depend on which images share a batch"):
        ctx = m.prepare_class("brick", None, "industrial")
    images = batch([None] * 4)["image"]
    with torch.no_grad():
        whole = m.predict(images, ctx)
        halves = [m.predict(images[i : i + 2], ctx) for i in (0, 2)]
        alone = m.predict(images[:1], ctx)
    torch.testing.assert_close(whole.maps, torch.cat([h.maps for h in halves]))
    assert not torch.allclose(alone.maps[0], whole.maps[0])  # batch composition matters


def test_presets():
    paper, released = preset("paper", "dpclip"), preset("released", "dpclip")
    assert paper.model.grn_axis == "tokens" and paper.eval.batch_size == 32
    assert paper.model.stale_prototype_update == "reuse" and paper.model.relu is False
    assert released.model.grn_axis == "batch" and released.model.decoupling_grid == 37
    assert paper.model.epochs == 20 and paper.model.batch_size == 3
    assert preset("paper_visa", "dpclip").data.test_datasets == ("VisA",)


# --------------------------------------------------------------------------- importer
def released_file(path, state: dict, epoch: int = 5) -> None:
    torch.save({"epoch": epoch, "image_adapter": state, "image_optimizer": {}}, path)


def test_released_image_adapter_imports(model, tiny_clip, tmp_path):
    with torch.no_grad():
        for p in model.image_adapter.parameters():
            p.add_(torch.randn_like(p))
    released_file(tmp_path / "image_adapter_5.pth", model.image_adapter.state_dict())
    other = make(tiny_clip)
    other.prototypes.ready.fill_(True)
    other.import_released(tmp_path / "image_adapter_5.pth")  # the contract's hook
    for k, v in model.image_adapter.state_dict().items():
        assert torch.equal(other.image_adapter.state_dict()[k], v), k
    assert not other.prototypes.ready.any()  # the released files hold no prototypes


def test_released_aaclip_file_is_refused_by_name_and_the_reverse(model, tiny_clip, tmp_path):
    torch.manual_seed(0)
    aa = AAClip(tiny_clip, AAClipConfig(class_descriptions="plain"))
    released_file(tmp_path / "aa.pth", aa.image_adapter.state_dict())
    with pytest.raises(
        ck.CheckpointMismatchError, match="an AA-CLIP adapter file.*--method aaclip"
    ):
        load_released(model, tmp_path / "aa.pth")
    torch.save({"epoch": 1, "text_adapter": aa.text_adapter.state_dict()}, tmp_path / "text.pth")
    with pytest.raises(ck.CheckpointMismatchError, match="AA-CLIP"):
        load_released(model, tmp_path / "text.pth")
    released_file(tmp_path / "dp.pth", model.image_adapter.state_dict())
    with pytest.raises(ck.CheckpointMismatchError, match="does not fit"):
        load_released_aaclip(aa, None, tmp_path / "dp.pth")  # AA-CLIP's importer refuses it
    args = ["import-released", "--method", "aaclip", "--image", str(tmp_path / "dp.pth")]
    with pytest.raises(ck.CheckpointMismatchError, match="a DP-CLIP adapter file.*dpclip"):
        cli.cmd_import(cli.build_parser().parse_args([*args, "--out", str(tmp_path / "x")]))


def test_released_file_of_another_shape_is_refused_naming_the_key(tiny_clip, tmp_path):
    m = make(tiny_clip)
    state = dict(m.image_adapter.state_dict())
    state["seg_proj.0.fc.weight"] = torch.zeros(3, 3)
    released_file(tmp_path / "bad.pth", state)
    with pytest.raises(ck.CheckpointMismatchError, match=r"seg_proj\.0\.fc\.weight \(3, 3\)"):
        load_released(m, tmp_path / "bad.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ck.CheckpointMismatchError, match="no 'image_adapter' entry"):
        load_released(m, tmp_path / "list.pth")


def test_cli_import_writes_a_dpclip_checkpoint(synthetic_root, tmp_path, capsys):
    cfg = apply_overrides(preset("smoke", "dpclip"), [f"backbone.image_size={SIZE}"])
    m = create_method(cfg)
    released_file(tmp_path / "image_adapter_3.pth", m.image_adapter.state_dict())
    out = tmp_path / "imported.safetensors"
    rc = cli.main(
        ["import-released", "--method", "dpclip", "--set", f"backbone.image_size={SIZE}",
         "--image", str(tmp_path / "image_adapter_3.pth"), "--out", str(out)]
    )  # fmt: skip
    assert rc == 0 and ck.read_meta(out)["method"] == "dpclip"
    methods = load_methods(cfg, [out], torch.device("cpu"))
    assert isinstance(next(iter(methods.values())), DPClip)


def test_our_checkpoints_are_refused_across_methods(synthetic_root, tmp_path):
    dp_cfg = apply_overrides(preset("smoke", "dpclip"), [f"backbone.image_size={SIZE}"])
    aa_cfg = apply_overrides(preset("smoke", "aaclip"), [f"backbone.image_size={SIZE}"])
    for cfg, other in ((dp_cfg, aa_cfg), (aa_cfg, dp_cfg)):
        m = create_method(cfg)
        path = tmp_path / f"{cfg.method}.safetensors"
        ck.save_adapters(path, m.adapter_state(), {"method": cfg.method, "config": {}})
        with pytest.raises(
            ck.CheckpointMismatchError, match=f"a {cfg.method} checkpoint, not {other.method}"
        ):
            load_methods(other, [path], torch.device("cpu"))


def test_cli_lists_dpclip(capsys):
    assert cli.main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "dpclip" in out and "paper, paper_visa, released, smoke" in out
    json.dumps(preset("smoke", "dpclip").to_dict())  # the config is serialisable
