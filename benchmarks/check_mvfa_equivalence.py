"""Development check: our MVFA against reference tensors of the authors' released code.

NOT a test and never run by the test suite. The reference side is produced outside this
repository by running the released MVFA-AD code (MediaBrain-SJTU/MVFA-AD @ a30bf7b, never
copied here) on shared random ViT-L-14-336 weights at 240 px, fp32, CPU, batch 1:

- ``vitl14_336_seed0.safetensors``: ``torch.manual_seed(0);
  open_clip.create_model('ViT-L-14-336', pretrained=None)``, raw fp32 state dict. The released
  loader rounds Linear/Conv/attention/projection weights through fp16; the reference was made
  with every floating tensor rounded (``v.half().float()``, which makes that rounding a
  no-op), so this side loads the same rounded weights.
- ``mvfa_trainables.pt``: the released adapters drawn right after ``torch.manual_seed(111)``
  (``{'seg_adapters', 'det_adapters'}``, the released checkpoint layout; imported here with
  ``MVFA.import_released``, and also compared with our own init from the same seed).
- ``mvfa_reference.pt``: inputs (``torch.Generator().manual_seed(2024)``: 4 test images, 2 bank
  images in [0, 1], labels 0, 0, 1, 1, two rectangular masks), text anchors of 'Brain' and
  'Chest X-ray film', the tokens and adapter outputs of image 0, the seg/det banks (2 images,
  no augmentation), per image and level A_l, s_l, D_l, and the exact (labels, scores) that
  the released few-shot and zero-shot ``test()`` functions passed to ``roc_auc_score`` for a
  segmentation set (Brain) and a classification-only set (Chest), plus one training step's
  det/seg losses and adapter gradients (images 0 and 2, Brain anchors).

Usage: ``python benchmarks/check_mvfa_equivalence.py [--released /tmp/released]``. Prints one
table of ``max|ours - released| / max|released|`` per quantity (tolerance 1e-4) and exits with
status 1 if any row exceeds it. CPU time: a few minutes (ViT-L text and image encoders).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aaclip.backbone import create_backbone  # noqa: E402
from aaclip.memory import MemoryBank  # noqa: E402
from aaclip.methods.base import ClassContext  # noqa: E402
from aaclip.methods.mvfa import (  # noqa: E402
    MVFA,
    MVFAConfig,
    detection_score,
    text_probs,
)

TOL = 1e-4
ROWS: list[tuple[str, float, float, bool]] = []


def compare(name: str, ours, ref, check: bool = True) -> float:
    """Record max|a - b| / max|b| over tensors (or lists of tensors)."""
    if isinstance(ours, list | tuple):
        ours = torch.cat([torch.as_tensor(o).flatten() for o in ours])
        ref = torch.cat([torch.as_tensor(r).flatten() for r in ref])
    a = torch.as_tensor(ours).double().flatten()
    b = torch.as_tensor(ref).double().flatten()
    if a.shape != b.shape:
        raise SystemExit(f"{name}: shape {tuple(a.shape)} vs released {tuple(b.shape)}")
    err = (a - b).abs().max().item()
    rel = err / max(b.abs().max().item(), 1e-30)
    ROWS.append((name, err, rel, check))
    return rel


def build(released: Path) -> MVFA:
    """ViT-L-14-336 at 240 px with the fp16-rounded shared weights, and our MVFA on it."""
    import open_clip
    from safetensors.torch import load_file

    backbone = create_backbone("ViT-L-14-336", image_size=240)
    state = load_file(str(released / "vitl14_336_seed0.safetensors"))
    state = {k: v.half().float() if v.is_floating_point() else v for k, v in state.items()}
    open_clip.model.resize_pos_embed(state, backbone.clip)  # 24^2 -> 17^2, bicubic, antialias
    backbone.clip.load_state_dict(state)
    torch.manual_seed(111)  # the reference drew its adapters right after this seed
    model = MVFA(backbone, MVFAConfig(memory_augment="none")).eval()
    trainables = torch.load(released / "mvfa_trainables.pt", weights_only=True)
    own = model.adapter_state()
    init = {
        f"{g}.{k}": v for g in ("seg_adapters", "det_adapters") for k, v in trainables[g].items()
    }
    compare("adapter init from seed 111 (= released)", [own[k] for k in init], list(init.values()))
    model.import_released(released / "mvfa_trainables.pt")
    return model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--released", type=Path, default=Path("/tmp/released"))
    args = p.parse_args(argv)
    t0 = time.time()
    ref = torch.load(args.released / "mvfa_reference.pt", weights_only=False)
    torch.set_grad_enabled(False)
    model = build(args.released)
    levels = model.levels
    assert levels == (6, 12, 18, 24), levels

    # text anchors
    anchors = {}
    for obj, name in (("Brain", "Brain"), ("Chest", "Chest X-ray film")):
        assert model.prompt_name(obj) == name
        anchors[obj] = model.class_anchors(obj, None).float()
        compare(f"text anchors {name!r}", anchors[obj], ref["text"][name])

    # image 0: adapter inputs/outputs per level and the scored tokens
    hooks, seen = [], {}
    for kind in ("seg", "det"):
        for k, lvl in enumerate(levels):
            module = getattr(model, f"{kind}_adapters")[k]

            def hook(mod, inp, out, key=f"{kind}{lvl}"):
                seen[key] = (inp[0], out[0], out[1])

            hooks.append(module.register_forward_hook(hook))
    seg1, det1 = model.encode_image(ref["test_imgs"][:1])
    for h in hooks:
        h.remove()
    single = ref["single"]
    for key, (x_in, h, y) in seen.items():
        r = single["adapters"][key]
        compare(f"image 0 {key}: block output x", x_in, r["x_in"])
        compare(f"image 0 {key}: h (scored token)", h, r["h"])
        if key.endswith("24"):
            compare(f"image 0 {key}: y (feeds nothing scored)", y, r["y"], check=False)
        else:
            compare(f"image 0 {key}: y", y, r["y"])
    compare("image 0 seg tokens (4 levels)", seg1, single["seg_tokens"])
    compare("image 0 det tokens (4 levels)", det1, single["det_tokens"])

    # memory banks (2 bank images, no augmentation), as fitted through the contract
    bank_ctx = {}
    for obj, has_masks, key in (("Brain", True, "seg_bank"), ("Chest", False, "det_bank")):
        ctx = ClassContext(obj, None, "medical", has_masks, anchors[obj])
        ctx = model.fit_memory(ctx, ref["bank_imgs"])
        released_bank = MemoryBank(ref[key])
        compare(
            f"memory bank {key} (normalised, CLS incl.)",
            ctx.memory.features,
            released_bank.features,
        )
        bank_ctx[obj] = ctx

    # the 4 test images in one batch of 4 (the reference ran them one by one)
    images = ref["test_imgs"]
    seg, det = model.encode_image(images)
    for obj in ("Brain", "Chest"):
        per = ref[obj]["per_level"]
        T = anchors[obj]
        compare(
            f"{obj}: A_l text maps (4 imgs x 4 levels)",
            torch.stack([text_probs(t, T, 240, 100.0)[:, 1] for t in seg], 1),
            per["A"],
        )
        compare(
            f"{obj}: s_l det scores",
            torch.stack([detection_score(t, T, 100.0) for t in det], 1),
            per["s"],
        )
    grids_seg = bank_ctx["Brain"].memory.distance_grids(seg)
    grids_det = bank_ctx["Chest"].memory.distance_grids(det)
    per = ref["Brain"]["per_level"]
    compare("memory distances D_l (seg bank)", torch.stack(grids_seg, 1), per["D_seg"])
    compare("memory distances D_l (det bank)", torch.stack(grids_det, 1), per["D_det"])

    # scores through predict + class_scores, against what the released test() scored
    for obj in ("Brain", "Chest"):
        rel = ref[obj]["released"]
        few_ctx = bank_ctx[obj]
        zero_ctx = ClassContext(obj, None, "medical", few_ctx.has_masks, anchors[obj])
        few_maps, few_scores = model.class_scores(model.predict(images, few_ctx), few_ctx)
        zero_maps, zero_scores = model.class_scores(model.predict(images, zero_ctx), zero_ctx)
        kind = "segmentation set" if few_ctx.has_masks else "classification-only set"
        if few_ctx.has_masks:
            compare(f"{obj} ({kind}) few-shot pixel map", few_maps, rel["few_calls"][0][1])
            compare(f"{obj} ({kind}) few-shot image score", few_scores, rel["few_calls"][1][1])
            compare(f"{obj} ({kind}) zero-shot image score", zero_scores, rel["zero_calls"][0][1])
            compare(f"{obj} ({kind}) zero-shot pixel map", zero_maps, rel["zero_calls"][1][1])
        else:
            compare(f"{obj} ({kind}) few-shot image score", few_scores, rel["few_calls"][0][1])
            compare(f"{obj} ({kind}) zero-shot image score", zero_scores, rel["zero_calls"][0][1])

    # one training step per image (Brain: a segmentation set, both losses)
    torch.set_grad_enabled(True)
    stage = model.stages()[0]
    model.start_stage(stage, ["Brain"], None)
    model.train()
    pre: dict[str, torch.Tensor] = {}  # fc1 pre-activations (W1 x) of the step's forward
    for group in ("seg_adapters", "det_adapters"):
        for k, adapter in enumerate(getattr(model, group)):

            def keep(mod, inp, out, key=f"{group}.{k}.fc1.0.weight"):
                pre[key] = out.detach()

            adapter.fc1[0].register_forward_hook(keep)
    for j, step in ref["train_step"].items():
        model.zero_grad(set_to_none=True)
        batch = {
            "image": images[j : j + 1],
            "label": ref["labels"][j : j + 1],
            "mask": ref["masks"][j : j + 1],
            "class_name": ["Brain"],
            "class_has_masks": torch.tensor([True]),
        }
        terms = model.loss(stage, batch)
        compare(f"train step image {j}: det loss", terms["detection"], step["det_loss"])
        compare(f"train step image {j}: seg loss", terms["segmentation"], step["seg_loss"])
        sum(terms.values()).backward()
        named = dict(model.adapters.named_parameters())
        ours, refs, kinks = [], [], []
        for name, g in step["grads"].items():
            if g is None:
                bad = float(named[name].grad is not None)
                ROWS.append((f"train step image {j}: {name} grad is None", bad, bad, True))
                continue
            mine = named[name].grad.clone()
            # A LeakyReLU pre-activation within rounding of 0 takes the other slope on one
            # side: that whole output row of W1's gradient differs. Such rows are reported
            # and left out of the comparison.
            if name in pre:
                rows = (mine - g).abs().amax(1) > TOL * g.abs().max()
                z = pre[name].abs().flatten(0, 1)  # tokens x units
                for r in rows.nonzero().flatten().tolist():
                    if z[:, r].min() < 1e-5 * z.max():
                        kinks.append(f"{name} row {r} (min |W1 x| {z[:, r].min():.1e})")
                        mine[r] = g[r] = 0
            ours.append(mine)
            refs.append(g)
        compare(f"train step image {j}: adapter grads (14 tensors)", ours, refs)
        for kink in kinks:
            ROWS.append((f"  left out, LeakyReLU kink: {kink}", float("nan"), float("nan"), False))

    width = max(len(r[0]) for r in ROWS)
    print(f"{'quantity':<{width}}  {'max abs':>10}  {'rel':>10}  ok")
    failed = 0
    for name, err, rel, check in ROWS:
        ok = rel <= TOL or not check
        failed += not ok
        flag = ("yes" if ok else "NO") if check else "info"
        print(f"{name:<{width}}  {err:10.3e}  {rel:10.3e}  {flag}")
    worst = max(r[2] for r in ROWS if r[3])
    print(
        f"worst checked relative difference {worst:.3e} (tolerance {TOL:g}); "
        f"{time.time() - t0:.0f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
