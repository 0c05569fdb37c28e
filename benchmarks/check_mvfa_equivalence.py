"""Development check: our MVFA against the authors' released code.

NOT a test and never run by the test suite. Two independent parts, either or both:

**Reference tensors** (``--released DIR``): produced outside this repository by running the
released MVFA-AD code (MediaBrain-SJTU/MVFA-AD @ a30bf7b, never copied here) on shared random
ViT-L-14-336 weights at 240 px, fp32, CPU, batch 1:

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

**Training steps run by the release itself** (``--release CLONE``: a work tree of
MediaBrain-SJTU/MVFA-AD @ a30bf7b, e.g. ``git worktree add /tmp/mvfa-release a30bf7b`` from a
clone; nothing of it is copied here). The release's own ``train_few.main()`` is imported from
the clone and run for exactly one optimiser step per image, for a segmentation set (Brain:
seg + det loss, both Adam optimisers step) and a classification-only set (Chest: det loss
only, only the det optimiser steps, the seg adapters stay in the graph). Only its inputs are
substituted: ``create_model`` returns the release's own CLIP (its ``create_model``, no
pretrained file) holding the shared weights (positional embedding resized by the release's
``resize_pos_embed``), ``MedDataset`` holds the one image (and mask) as its few-shot set (an
abnormal image: with normal image 1, which the bank loader needs), ``augment`` passes them
through unaugmented, its loaders keep their order (the image is the first step),
``encode_text_with_prompt_ensemble`` (the release's) is computed once per set and reused, and
on a machine without CUDA the one bookkeeping tensor ``CLIP_Inplanted.forward`` sends to
``'cuda'`` (``adapter.py`` L78, never used) stays on the CPU.
An Adam subclass stands in for ``torch.optim.Adam`` to read, at the det optimiser's step, the
losses, the adapter gradients of every level (seg and det), both optimisers' state and the
adapters before and after the step; then the run is stopped. Our side is
``aaclip.train.train_step`` on the same image from the same seed-111 adapters (gradients read
as backward leaves them, before the step). Compared per set and image: text anchors, losses,
the gradients of each level's seg and det adapters (a gradient that is None must be None on
both sides), the seg adapters and Adam state after a classification-only step (unchanged /
empty on both sides), and the adapters after the step (info: Adam's first step is lr times
the gradient's sign, which a gradient within rounding of 0 may flip). Inputs:
``torch.Generator().manual_seed(2024)``: 4 images in [0, 1], labels 0, 0, 1, 1, rectangles as
masks of images 2 and 3; steps on images 0 and 2. Both sides run in float64 by default
(the default dtype while they run; the weights stay the fp16-rounded ones, our det scores are
cast to fp32 as in training). In fp32 (``--steps-dtype float32``) two rows exceeded the
tolerance when measured: the small seg-adapter gradients of a classification-only step
(1.2e-4 and 1.5e-4 relative, 1.4e-7 absolute) on an image with two W1 x within 1e-6 of
LeakyReLU's kink, where rounding can take the other slope on one side and the backward through
that token reaches every earlier level. The shared weights: the reference
directory's file if given, else made the same way (``torch.manual_seed(0)``, open_clip,
fp16-rounded). The release imports ``kornia`` (and torchvision, pandas, sklearn, scipy):
run the script with a Python that has them besides this project's packages, e.g. a venv in
/tmp whose ``.pth`` file adds this project's site-packages.

Usage: ``python benchmarks/check_mvfa_equivalence.py [--released /tmp/released]
[--release /tmp/mvfa-release]``. Prints one table of ``max|ours - released| / max|released|``
per quantity (tolerance 1e-4) and exits with status 1 if any row exceeds it. CPU time, one
thread: reference tensors a few minutes (ViT-L text and image encoders); training steps 13 min
in float64, 3.7–6.5 min in fp32 (most of it the release's 420-sentence text ensembles).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

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


def check_reference(released: Path) -> None:
    """Every quantity of the reference tensors (see the module docstring)."""
    ref = torch.load(released / "mvfa_reference.pt", weights_only=False)
    torch.set_grad_enabled(False)
    model = build(released)
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

    torch.set_grad_enabled(False)


# --------------------------------------------------------------------------- release, run
IMAGE = 240
STEP_IMAGES = (0, 2)  # one normal, one abnormal image per set
SETS = (("Brain", True), ("Chest", False))  # (set, segmentation set?)


class _StopRelease(Exception):
    """Raised right after the release's det optimiser made its first step."""


class _StaysOnCpu:
    """`torch` as the release's adapter module sees it on a machine without CUDA: the one
    tensor `CLIP_Inplanted.forward` sends to 'cuda' (the attention bookkeeping of adapter.py
    L76-81, returned by nothing) stays where it is made. Every other name is torch's own."""

    class _Here:
        def __init__(self, t: torch.Tensor) -> None:
            self.t = t

        def to(self, *args, **kwargs) -> torch.Tensor:
            return self.t

    def __getattr__(self, name: str):
        return getattr(torch, name)

    def zeros(self, *args, **kwargs):
        t = torch.zeros(*args, **kwargs)
        return self._Here(t) if args and isinstance(args[0], list) else t


def shared_weights(released: Path | None) -> dict[str, torch.Tensor]:
    """The shared ViT-L-14-336 weights (336 px), every floating tensor rounded through fp16:
    the reference folder's file if there is one, else made the same way."""
    from safetensors.torch import load_file

    file = released / "vitl14_336_seed0.safetensors" if released is not None else None
    if file is not None and file.is_file():
        state = load_file(str(file))
    else:
        import open_clip

        torch.manual_seed(0)
        state = open_clip.create_model("ViT-L-14-336", pretrained=None).state_dict()
    return {k: v.half().float() if v.is_floating_point() else v.clone() for k, v in state.items()}


def step_inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4 images in [0, 1] (drawn in fp32), labels 0, 0, 1, 1, masks of images 2 and 3."""
    g = torch.Generator().manual_seed(2024)
    images = torch.rand(4, 3, IMAGE, IMAGE, generator=g, dtype=torch.float32).to(dtype)
    labels = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=dtype)
    masks = torch.zeros(4, 1, IMAGE, IMAGE, dtype=dtype)
    masks[2, :, 60:150, 40:120] = 1
    masks[3, :, 130:200, 100:210] = 1
    return images, labels, masks


def _release_main_frame():
    """The frame of the release's `train_few.main` on the current stack."""
    f = sys._getframe(1)
    while f is not None and not (
        f.f_code.co_name == "main" and f.f_code.co_filename.endswith("train_few.py")
    ):
        f = f.f_back
    if f is None:
        raise RuntimeError("no train_few.main on the stack")
    return f


def _adapters(model) -> dict[str, torch.Tensor]:
    """Adapter parameters by our (= the released checkpoint's) names."""
    return {
        f"{group}.{k}": v
        for group in ("seg_adapters", "det_adapters")
        for k, v in getattr(model, group).named_parameters()
    }


def released_step(train_few, clip, obj: str, image, label, mask, support, texts: dict) -> dict:
    """The release's `train_few.main()` on one image, stopped after its first step (see the
    module docstring for what is substituted). `support`: the normal image of the few-shot
    set when `image` is abnormal (the release's bank loader needs one; trained second)."""
    import CLIP.adapter as released_adapter

    seg_set = train_few.CLASS_INDEX[obj] > 0
    if label == 1:
        abnormal, abnormal_mask, normal = image, (mask if seg_set else None), support
    else:
        abnormal, abnormal_mask = image[:0], (mask[:0] if seg_set else None)
        normal = image

    class OneImage(torch.utils.data.Dataset):  # the few-shot set; the test split is empty
        fewshot_abnorm_img, fewshot_abnorm_mask, fewshot_norm_img = abnormal, abnormal_mask, normal

        def __len__(self) -> int:
            return 0

        def __getitem__(self, i):
            raise IndexError(i)

    def unaugmented(img, img_mask=None):
        return img, img_mask if img_mask is not None else torch.zeros(len(img), 1, IMAGE, IMAGE)

    encode_text = train_few.encode_text_with_prompt_ensemble

    def text_once(model, name, device):
        if name not in texts:
            texts[name] = encode_text(model, name, device)
        return texts[name]

    made: list[torch.optim.Optimizer] = []
    out: dict = {}
    adam = torch.optim.Adam

    class Recording(adam):
        def __init__(self, params, *args, **kwargs) -> None:
            super().__init__(params, *args, **kwargs)
            made.append(self)
            if len(made) == 1:  # seg optimiser: made right after the adapters were drawn
                model = _release_main_frame().f_locals["model"]
                out["init"] = {k: v.detach().clone() for k, v in _adapters(model).items()}

        def step(self, closure=None):
            if self is not made[1]:
                return super().step(closure)
            frame = _release_main_frame()
            named = _adapters(frame.f_locals["model"])
            out["grads"] = {
                k: None if v.grad is None else v.grad.detach().clone() for k, v in named.items()
            }
            out["image"] = frame.f_locals["image"].detach().clone()
            out["det_loss"] = frame.f_locals["det_loss"].detach().clone()
            if "seg_loss" in frame.f_locals:
                out["seg_loss"] = frame.f_locals["seg_loss"].detach().clone()
            super().step(closure)
            out["after"] = {k: v.detach().clone() for k, v in named.items()}
            out["seg_state"] = len(made[0].state)
            out["det_steps"] = sorted({int(st["step"]) for st in made[1].state.values()})
            raise _StopRelease

    argv = ["train_few.py", "--obj", obj, "--epoch", "1", "--save_model", "0"]
    patches = {
        "create_model": lambda **kw: clip,
        "MedDataset": lambda *a, **kw: OneImage(),
        "augment": unaugmented,
        "encode_text_with_prompt_ensemble": text_once,
        "device": torch.device("cpu"),
        "use_cuda": False,
    }
    loader = torch.utils.data.DataLoader

    def in_order(*args, **kwargs):  # the training set's abnormal images come first
        return loader(*args, **{**kwargs, "shuffle": False})

    with ExitStack() as stack:
        for name, value in patches.items():
            stack.enter_context(mock.patch.object(train_few, name, value))
        stack.enter_context(mock.patch.object(torch.utils.data, "DataLoader", in_order))
        stack.enter_context(mock.patch.object(torch.optim, "Adam", Recording))
        stack.enter_context(mock.patch.object(sys, "argv", argv))
        if not torch.cuda.is_available():
            stack.enter_context(mock.patch.object(released_adapter, "torch", _StaysOnCpu()))
        try:
            train_few.main()
        except _StopRelease:
            pass
        else:
            raise RuntimeError("the release's training loop ended before its first det step")
    for q in clip.parameters():  # the release marks CLIP trainable too (never stepped)
        q.grad = None
    return out


def our_step(model: MVFA, init: dict, obj: str, seg_set: bool, image, label, mask) -> dict:
    """`aaclip.train.train_step` on one image from the initial adapters; gradients as
    backward leaves them (before the step), W1 x of every adapter for the kink check."""
    from aaclip.train import Optimiser, train_step

    model.load_adapter_state(init)
    stage = model.stages()[0]
    opt = Optimiser.for_stage(model, stage)
    model.start_stage(stage, [obj], None)
    model.train()
    named = _adapters(model)
    out: dict = {"grads": dict.fromkeys(named), "pre": {}}

    def keep_grad(p, k):
        out["grads"][k] = p.grad.detach().clone()

    hooks = [
        p.register_post_accumulate_grad_hook(lambda p, k=k: keep_grad(p, k))
        for k, p in named.items()
    ]
    for group in ("seg_adapters", "det_adapters"):
        for k, adapter in enumerate(getattr(model, group)):

            def keep(mod, inp, o, key=f"{group}.{k}.fc1.0.weight"):
                out["pre"][key] = o.detach()

            hooks.append(adapter.fc1[0].register_forward_hook(keep))
    batch = {
        "image": image,
        "label": label.reshape(1),
        "mask": mask,
        "class_name": [obj],
        "class_has_masks": torch.tensor([seg_set]),
    }
    with torch.enable_grad():
        out["terms"] = train_step(model, stage, batch, opt)
    for h in hooks:
        h.remove()
    state = opt.optimizer.state
    out["after"] = {k: v.detach().clone() for k, v in named.items()}
    out["seg_state"] = sum(p in state for p in model.seg_adapters.parameters())
    out["det_steps"] = sorted(
        {int(state[p]["step"]) for p in model.det_adapters.parameters() if p in state}
    )
    model.eval()
    return out


def compare_level_grads(label: str, ours: dict, ref: dict, pre: dict, levels) -> None:
    """Per kind and level, the fc1 and fc2 gradients; a gradient that is None on one side must
    be None on the other. Rows of W1's gradient whose pre-activation is within rounding of 0
    (a LeakyReLU kink: the other slope on one side) are reported and left out."""
    for kind in ("seg", "det"):
        for k, lvl in enumerate(levels):
            mine, theirs, kinks, absent = [], [], [], []
            for part in ("fc1", "fc2"):
                name = f"{kind}_adapters.{k}.{part}.0.weight"
                a, b = ours[name], ref[name]
                if a is None or b is None:
                    bad = float((a is None) != (b is None))
                    ROWS.append((f"{label}: {name} grad None on both sides", bad, bad * 1e9, True))
                    absent.append(part)
                    continue
                a, b = a.clone(), b.clone()
                if name in pre:
                    rows = (a - b).abs().amax(1) > TOL * b.abs().max()
                    z = pre[name].abs().flatten(0, 1)  # tokens x units
                    for r in rows.nonzero().flatten().tolist():
                        if z[:, r].min() < 1e-5 * z.max():
                            kinks.append(f"{name} row {r} (min |W1 x| {z[:, r].min():.1e})")
                            a[r] = b[r] = 0
                mine.append(a)
                theirs.append(b)
            if mine:
                parts = "fc1, fc2" if not absent else ("fc2" if "fc1" in absent else "fc1")
                compare(f"{label}: {kind} level {lvl} grads ({parts})", mine, theirs)
            for kink in kinks:
                nan = float("nan")
                ROWS.append((f"  left out, LeakyReLU kink: {kink}", nan, nan, False))


def exactly(label: str, value: float) -> None:
    """A row that holds only when `value` is 0 (a count or a change that must be none)."""
    ROWS.append((label, value, 0.0 if value == 0 else float("inf"), True))


def check_training_steps(clone: Path, released: Path | None, dtype: torch.dtype) -> None:
    """One training step per set and image, ours against the release's own loop, both in
    `dtype` (the default dtype while it runs: the release makes its tensors with it)."""
    state = shared_weights(released)  # drawn in fp32 whatever the dtype
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        _training_steps(clone, state, dtype)
    finally:
        torch.set_default_dtype(previous)


def _training_steps(clone: Path, state: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    clone = clone.resolve()
    if not (clone / "train_few.py").is_file():
        raise SystemExit(f"{clone}: no train_few.py (a work tree of MediaBrain-SJTU/MVFA-AD)")
    sys.path.insert(0, str(clone))
    import CLIP.model as released_model
    import train_few
    from CLIP.clip import create_model as released_create_model

    clip = released_create_model(
        model_name="ViT-L-14-336", img_size=IMAGE, pretrained=None, force_image_size=IMAGE
    )
    theirs = dict(state)
    released_model.resize_pos_embed(theirs, clip)
    clip.load_state_dict(theirs)
    clip.to(dtype).eval()

    import open_clip

    backbone = create_backbone("ViT-L-14-336", image_size=IMAGE)
    ours_state = dict(state)
    open_clip.model.resize_pos_embed(ours_state, backbone.clip)
    backbone.clip.load_state_dict(ours_state)
    backbone.clip.to(dtype)
    compare(
        "steps: positional embedding resized to 17x17 (ours vs released resize_pos_embed)",
        backbone.clip.visual.positional_embedding,
        clip.visual.positional_embedding,
    )
    state.clear()  # the caller's copy too: only the two models keep the weights
    del theirs, ours_state
    torch.manual_seed(111)  # the release draws its adapters right after setup_seed(111)
    model = MVFA(backbone, MVFAConfig(memory_augment="none")).eval()
    init = {k: v.detach().clone() for k, v in model.adapter_state().items()}
    images, labels, masks = step_inputs(dtype)
    texts: dict = {}
    for obj, seg_set in SETS:
        kind = "segmentation set" if seg_set else "classification-only set"
        for j in STEP_IMAGES:
            label = f"{obj} ({kind}) step, image {j} (label {int(labels[j])})"
            t = time.time()
            rel = released_step(
                train_few, clip, obj, images[j : j + 1], labels[j], masks[j : j + 1],
                images[1:2], texts,
            )  # fmt: skip
            if not torch.equal(rel["image"], images[j : j + 1]):
                raise RuntimeError(f"{label}: the release trained on another image first")
            ours = our_step(
                model, init, obj, seg_set, images[j : j + 1], labels[j], masks[j : j + 1]
            )
            print(f"{label}: {time.time() - t:.0f} s", flush=True)
            if obj == SETS[0][0] and j == STEP_IMAGES[0]:
                compare("steps: adapter init from seed 111 (ours vs released)",
                        [init[k] for k in rel["init"]], list(rel["init"].values()))  # fmt: skip
            name = train_few.REAL_NAME[obj]
            if j == STEP_IMAGES[0]:
                compare(f"steps: text anchors {name!r}", model.class_anchors(obj, None),
                        texts[name])  # fmt: skip
            compare(f"{label}: det loss", ours["terms"]["detection"], rel["det_loss"])
            if seg_set:
                compare(f"{label}: seg loss", ours["terms"]["segmentation"], rel["seg_loss"])
            elif "segmentation" in ours["terms"] or "seg_loss" in rel:
                exactly(f"{label}: a seg loss on one side only", 1.0)
            compare_level_grads(label, ours["grads"], rel["grads"], ours["pre"], model.levels)
            seg = [k for k in init if k.startswith("seg_")]
            if not seg_set:
                for side, res in (("ours", ours), ("released", rel)):
                    moved = max((res["after"][k] - init[k]).abs().max().item() for k in seg)
                    exactly(f"{label}: seg adapters moved by the step ({side}), max", moved)
                    exactly(f"{label}: seg params with Adam state ({side})", res["seg_state"])
            exactly(
                f"{label}: det Adam step counts {ours['det_steps']} (ours) vs "
                f"{rel['det_steps']} (released)",
                float(ours["det_steps"] != rel["det_steps"]),
            )
            for group in ("seg", "det"):
                keys = [k for k in init if k.startswith(group)]
                compare(
                    f"{label}: {group} adapters after the step (Adam's sign step)",
                    [ours["after"][k] for k in keys],
                    [rel["after"][k] for k in keys],
                    check=False,
                )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--released", type=Path, help="the reference tensors' folder")
    p.add_argument("--release", type=Path, help="a work tree of the released code")
    p.add_argument(
        "--steps-dtype",
        choices=("float64", "float32"),
        default="float64",
        help="precision of both sides' training steps (--release)",
    )
    args = p.parse_args(argv)
    if args.released is None and args.release is None and Path("/tmp/released").is_dir():
        args.released = Path("/tmp/released")
    if args.released is None and args.release is None:
        raise SystemExit("give --released (reference tensors) and/or --release (released code)")
    t0 = time.time()
    if args.released is not None:
        check_reference(args.released)
    if args.release is not None:
        check_training_steps(args.release, args.released, getattr(torch, args.steps_dtype))

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
