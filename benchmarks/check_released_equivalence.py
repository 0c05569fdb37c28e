"""Development check: our AA-CLIP against the authors' released code, on shared random weights.

NOT a test and never run by the test suite: it needs the authors' code (GitHub
``Mwxinnn/AA-CLIP``, commit 53db195), which is not part of this repository and must never be
copied into it. This script only imports and calls that code from a throw-away export:

    mkdir -p /tmp/aaclip_released
    git -C /work/.mirror/Mwxinnn+AA-CLIP/repo archive HEAD | tar -x -C /tmp/aaclip_released
    .venv/bin/pip install --no-deps --target /tmp/relsite kornia==0.6.9 opencv-python-headless
    printf 'def set_trace(*a, **k):\\n    raise RuntimeError("ipdb stub")\\n' > /tmp/relsite/ipdb.py
    PYTHONPATH=/tmp/relsite:/tmp/aaclip_released \\
        .venv/bin/python benchmarks/check_released_equivalence.py

(kornia 0.6.9 is the version pinned by the released requirements.txt; ``--no-deps`` keeps the
project's torch. ipdb is imported but never called by the checked code, so a stub does.)

What it does (fp32, CPU, eval mode, no_grad): builds the released ``ViT-L-14-336`` CLIP with
random weights at 336 px (biases / LayerNorms / embeddings perturbed so that no parameter is
trivially zero or one), saves its state dict, rebuilds the released model at ``--image-size``
(positional embedding resized by the released ``resize_pos_embed``) and ours with
``create_backbone(..., weights=file, image_size=...)`` (resized by open_clip). Random xavier
adapters of a released ``AdaptedCLIP`` are imported into ``AAClip`` through
``methods.aaclip.load_released`` (released-format ``.pth`` files). It then compares text anchors,
image features, test-time maps, image probabilities, per-class normalised scores (and the
released ``metrics_eval`` metrics), stage-1 surgery features and the stage-1 / stage-2 losses,
and prints one table: ``max|ours - released| / max|released|`` per quantity (tolerance 1e-4).
Rows marked ``info`` are measurements (e.g. the released batch-axis V-V attention defect), not
pass/fail comparisons. Exit status 1 if any checked row exceeds the tolerance.

Wherever the released code computes something inline rather than in a callable function
(the stage-1 feature recipe and losses in ``train.py``, the score normalisation inside
``metrics_eval``), this script re-derives it from the released description in its own code and
says so in the row's note.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score

from aaclip import losses, prompts, scoring
from aaclip.backbone import create_backbone, get_tokenizer
from aaclip.methods.aaclip import AAClip, AAClipConfig, load_released

TOL = 1e-4
NAME = "ViT-L-14-336"
LEVELS = [6, 12, 18, 24]
ROWS: list[tuple[str, float, float, str, str]] = []


# ----------------------------------------------------------------------------- helpers
def released():
    """Import the released modules (from PYTHONPATH) or explain how to provide them."""
    try:
        return {
            "clip": importlib.import_module("model.clip"),
            "model": importlib.import_module("model.model"),
            "adapter": importlib.import_module("model.adapter"),
            "tokenizer": importlib.import_module("model.tokenizer"),
            "fu": importlib.import_module("forward_utils"),
            "constants": importlib.import_module("dataset.constants"),
        }
    except ImportError as e:
        sys.exit(f"cannot import the released AA-CLIP code ({e}); see this file's docstring")


def compare(name: str, ours, ref, note: str = "", check: bool = True) -> float:
    """Record max|a-b| and max|a-b|/max|b| for tensors / arrays / lists of them."""
    if isinstance(ours, list | tuple):
        ours, ref = torch.cat([o.flatten() for o in ours]), torch.cat([r.flatten() for r in ref])
    a = torch.as_tensor(np.asarray(ours) if not torch.is_tensor(ours) else ours).double()
    b = torch.as_tensor(np.asarray(ref) if not torch.is_tensor(ref) else ref).double()
    if a.shape != b.shape:
        ROWS.append((name, float("nan"), float("nan"), "FAIL", f"shape {a.shape} vs {b.shape}"))
        return float("inf")
    diff = (a - b).abs().max().item()
    rel = diff / max(b.abs().max().item(), 1e-30)
    status = ("ok" if rel <= TOL else "FAIL") if check else "info"
    ROWS.append((name, diff, rel, status, note))
    return rel


def note_row(name: str, ok: bool, note: str) -> None:
    ROWS.append((name, float("nan"), float("nan"), "ok" if ok else "FAIL", note))


def rel_norm(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int) -> None:
    """Random but non-trivial backbone: noise on every 1-D parameter (biases, LN, embeddings)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() == 1 and p.numel() > 1:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        elif name == "text_projection":
            p.normal_(0, p.shape[0] ** -0.5, generator=g)


# ----------------------------------------------------------------------------- backbones
def build_backbones(rel, image_size: int, workdir: Path):
    """Released CLIP at `image_size` and ours, sharing one random 336-px state dict."""
    torch.manual_seed(0)
    base = rel["clip"].create_model(model_name=NAME, img_size=336, pretrained=None)
    perturb(base, seed=1)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    weights = workdir / "random_vit_l_14_336.pth"
    torch.save(state, weights)
    del base

    def released_at_size():
        m = rel["clip"].create_model(
            model_name=NAME, img_size=image_size, pretrained=None, force_image_size=image_size
        )
        sd = {k: v.clone() for k, v in state.items()}
        rel["model"].resize_pos_embed(sd, m)  # what the released "openai" path does
        m.load_state_dict(sd, strict=True)
        return m.eval()

    rel_clip = released_at_size()
    ours = create_backbone(NAME, weights=weights, image_size=image_size)

    rel_sd, our_sd = rel_clip.state_dict(), ours.clip.state_dict()
    missing, unexpected = sorted(set(rel_sd) - set(our_sd)), sorted(set(our_sd) - set(rel_sd))
    note_row(
        "backbone state-dict keys",
        not missing and not unexpected,
        f"{len(rel_sd)} keys; only released: {missing[:3]}, only ours: {unexpected[:3]}",
    )
    common = [k for k in rel_sd if k in our_sd]
    per_tensor = {k: (our_sd[k] - rel_sd[k]).abs().max().item() for k in common}
    worst = max(per_tensor, key=per_tensor.get)
    scale = max(rel_sd[k].abs().max().item() for k in common)
    rel_err = per_tensor[worst] / scale
    ROWS.append(
        (
            "backbone weights after load (all)",
            per_tensor[worst],
            rel_err,
            "ok" if rel_err <= TOL else "FAIL",
            f"{len(common)} tensors, worst {worst}",
        )
    )
    compare(
        f"visual.positional_embedding 336->{image_size}",
        our_sd["visual.positional_embedding"],
        rel_sd["visual.positional_embedding"],
        "released resize_pos_embed vs open_clip (bicubic, antialias, align_corners=False)",
    )
    gelu_rel = type(rel_clip.visual.transformer.resblocks[0].mlp.gelu).__name__
    gelu_our = type(ours.clip.visual.transformer.resblocks[0].mlp.gelu).__name__
    note_row("MLP activation", gelu_rel == gelu_our, f"released {gelu_rel}, ours {gelu_our}")

    surgery = released_at_size()
    surgery.visual.DAPM_replace(DPAM_layer=20)  # as train.py (--surgery_until_layer 20)
    return rel_clip, surgery, ours, weights


# ----------------------------------------------------------------------------- adapters
def build_adapted(rel, rel_clip, ours_clip, relu: bool, workdir: Path):
    """Released AdaptedCLIP (random xavier adapters, seeded) and ours with the same weights."""
    torch.manual_seed(11 if relu else 10)
    adapted = rel["adapter"].AdaptedCLIP(clip_model=rel_clip, relu=relu).eval()
    text_file, image_file = workdir / "text_adapter.pth", workdir / f"image_adapter_{relu:d}.pth"
    torch.save(
        {"epoch": 5, "text_adapter": adapted.text_adapter.state_dict(), "text_optimizer": {}},
        text_file,
    )
    torch.save(
        {"epoch": 1, "image_adapter": adapted.image_adapter.state_dict(), "image_optimizer": {}},
        image_file,
    )
    torch.manual_seed(123)  # a different init, overwritten by the import
    model = AAClip(ours_clip, AAClipConfig(relu=relu, class_descriptions="official")).eval()

    # direct state-dict import (same key names)
    direct = AAClip(ours_clip, AAClipConfig(relu=relu)).eval()
    direct.text_adapter.load_state_dict(adapted.text_adapter.state_dict())
    direct.image_adapter.load_state_dict(adapted.image_adapter.state_dict())

    load_released(model, text_file, image_file)
    ref = {**adapted.text_adapter.state_dict(), **adapted.image_adapter.state_dict()}
    got = {**model.text_adapter.state_dict(), **model.image_adapter.state_dict()}
    same = ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    d_state, m_state = direct.adapter_state(), model.adapter_state()
    same_direct = d_state.keys() == m_state.keys() and all(
        torch.equal(d_state[k], m_state[k]) for k in d_state
    )
    note_row(
        f"adapter import relu={relu}",
        same and same_direct,
        f"load_released(.pth) and load_state_dict: {len(ref)} tensors bit-identical",
    )
    return adapted, model


# ----------------------------------------------------------------------------- checks
def check_prompts_and_tokens(rel):
    fu, const = rel["fu"], rel["constants"]
    ok_states = (
        list(prompts.NORMAL_STATES) == fu.prompt_normal
        and list(prompts.ABNORMAL_STATES) == fu.prompt_abnormal
        and list(prompts.TEMPLATES) == fu.prompt_templates
    )
    note_row("prompt states / templates", ok_states, "identical strings and order")
    diffs = [
        f"{ds}/{c}"
        for ds, table in const.REAL_NAMES.items()
        for c, text in table.items()
        if prompts.describe(c, ds, "official") != text
    ]
    n = sum(len(t) for t in const.REAL_NAMES.values())
    note_row("official class descriptions", not diffs, f"{n} entries; differ: {diffs[:3]}")
    dom = [ds for ds, d in const.DOMAINS.items() if prompts.domain_of(ds) != d.lower()]
    note_row("dataset domains", not dom, f"{len(const.DOMAINS)} datasets; differ: {dom}")
    tok = get_tokenizer(NAME)
    sentences = [
        s
        for table in const.REAL_NAMES.values()
        for text in table.values()
        for group in prompts.prompt_sentences(text)
        for s in group
    ]
    a, b = tok(sentences), rel["tokenizer"].tokenize(sentences)
    note_row(
        "tokenizer",
        torch.equal(a.long(), b.long()),
        f"{len(sentences)} prompt sentences, token ids equal",
    )


@torch.no_grad()
def check_text(rel, adapted, rel_clip, model):
    fu = rel["fu"]
    t_rel = fu.get_adapted_single_class_text_embedding(adapted, "MVTec", "bottle", "cpu")
    t_our = model.class_anchors(prompts.describe("bottle", "MVTec"))
    compare("text anchors, adapted (MVTec bottle)", t_our, t_rel, "'dark bottle', (768, 2)")
    f_rel = fu.get_adapted_single_class_text_embedding(rel_clip, "MVTec", "bottle", "cpu")
    f_our = model.class_anchors("dark bottle", adapted=False)
    compare("text anchors, frozen CLIP", f_our, f_rel, "test.py path without text adapter")
    return t_rel, t_our


@torch.no_grad()
def check_image(rel, adapted, model, x, t_rel, t_our, tag: str):
    fu = rel["fu"]
    size = x.shape[-1]
    seg_rel, det_rel = adapted(x)
    seg_our, det_our = model.encode_image(x)
    for lvl, a, b in zip(LEVELS, seg_our, seg_rel, strict=True):
        compare(f"{tag} seg features level {lvl}", a, b, f"{tuple(b.shape)}")
    compare(f"{tag} det feature", det_our, det_rel, f"{tuple(det_rel.shape)}")

    out = {}
    for domain in ("Industrial", "Medical"):
        per_level = [
            fu.calculate_similarity_map(f, t_rel, size, test=True, domain=domain) for f in seg_rel
        ]
        maps_rel = torch.cat(per_level, dim=1).sum(1)  # as test.py get_predictions
        maps_our = scoring.anomaly_map(seg_our, t_our, size, domain.lower())
        compare(f"{tag} anomaly map {domain} (end-to-end)", maps_our, maps_rel, "summed levels")
        same_in = scoring.anomaly_map(seg_rel, t_rel, size, domain.lower())
        compare(f"{tag} anomaly map {domain} (scoring only)", same_in, maps_rel, "same inputs")
        out[domain] = (maps_our, maps_rel)
    p_rel = det_rel @ t_rel
    p_rel = (p_rel[:, 1] + 1) / 2  # as test.py get_predictions
    p_our = scoring.image_probability(det_our, t_our)
    compare(f"{tag} image probability", p_our, p_rel, "(v.t_a + 1) / 2")
    return out, (p_our, p_rel), (seg_rel, det_rel), (seg_our, det_our)


def released_normalised(pixel: np.ndarray, image: np.ndarray, domain: str):
    """Re-derived from forward_utils.metrics_eval (which returns metrics only): each array is
    min-max normalised over the class unless its max is exactly 1; industrial image score =
    0.5 * max(map) + 0.5 * p, medical = max(map)."""
    if pixel.max() != 1:
        pixel = (pixel - pixel.min()) / (pixel.max() - pixel.min())
    if image.max() != 1:
        image = (image - image.min()) / (image.max() - image.min())
    peak = pixel.max(axis=(1, 2))
    return pixel, (peak * 0.5 + image * 0.5 if domain != "Medical" else peak)


def check_class_scores(rel, maps, probs, masks, labels, tag: str):
    fu = rel["fu"]
    p_our, p_rel = probs
    for domain, (m_our, m_rel) in maps.items():
        nm_rel, s_rel = released_normalised(m_rel.numpy(), p_rel.numpy(), domain)
        nm_our, s_our = scoring.class_scores(m_our, p_our, domain.lower())
        compare(f"{tag} class-normalised maps {domain}", nm_our, nm_rel, "re-derived reference")
        compare(f"{tag} class image scores {domain}", s_our, s_rel, "re-derived reference")
        res = fu.metrics_eval(masks, labels, m_rel.numpy(), p_rel.numpy(), "bottle", domain)
        ours = {
            "pixel AUC": roc_auc_score(masks.flatten(), nm_our.numpy().flatten()),
            "pixel AP": average_precision_score(masks.flatten(), nm_our.numpy().flatten()),
            "image AUC": roc_auc_score(labels, s_our.numpy()),
            "image AP": average_precision_score(labels, s_our.numpy()),
        }
        for k, v in ours.items():
            compare(
                f"{tag} metrics_eval {k} {domain}",
                torch.tensor(round(v, 4) * 100),
                torch.tensor(float(res[k])),
                "released metrics_eval on released maps vs sklearn on ours",
            )


@torch.no_grad()
def released_stage1(rel_clip, surgery, x):
    """Stage-1 features as released train.py computes them inline (re-derived here):
    surgery tokens at [6, 12, 18, 24] -> ln_post(patch tokens) @ proj -> L2 norm, plus the
    L2-normalised CLS embedding of the original (non-surgery) model."""
    _, tokens = surgery.encode_image(x, LEVELS)
    cls, _ = rel_clip.encode_image(x, [])
    cls = F.normalize(cls, dim=-1)
    v = surgery.visual
    return [F.normalize(v.ln_post(t[:, 1:]) @ v.proj, dim=-1) + cls[:, None] for t in tokens]


class _BatchFirst(torch.nn.Module):
    """Hands the released surgery `Attention` (written for batch-first input) the batch-first
    layout: a released-code reference for the fixed (`tokens`) V-V attention variant."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, q_x, k_x=None, v_x=None, attn_mask=None):
        q = q_x.transpose(0, 1)
        out, weights = self.inner(q, q, q, attn_mask=attn_mask)
        return [out.transpose(0, 1), weights]


@torch.no_grad()
def released_stage1_fixed(rel_clip, surgery, x):
    """released_stage1 with every surgery attention fed batch-first (across tokens)."""
    blocks = [
        blk
        for blk in surgery.visual.transformer.resblocks
        if type(blk.attn).__name__ == "Attention"
    ]
    for blk in blocks:
        blk.attn = _BatchFirst(blk.attn)
    try:
        return released_stage1(rel_clip, surgery, x), len(blocks)
    finally:
        for blk in blocks:
            blk.attn = blk.attn.inner


@torch.no_grad()
def check_stage1(rel_clip, surgery, model, x, defect_batches: list[int]):
    b = x.shape[0]
    ref = released_stage1(rel_clip, surgery, x)
    model.cfg.vv_attention_axis = "batch"
    ours, _ = model.stage1_features(x)
    for lvl, a, r in zip(LEVELS, ours, ref, strict=True):
        compare(f"stage-1 level {lvl}, batch {b}, axis=batch", a, r, "released defect reproduced")
    ref1 = released_stage1(rel_clip, surgery, x[:1])
    one, _ = model.stage1_features(x[:1])
    compare("stage-1 all levels, batch 1, axis=batch", one, ref1, "released at batch 1")

    # The fixed variant (attention across tokens) against the released Attention module fed
    # batch-first; it is NOT the released result at any batch size, batch 1 included (there
    # the released attention is a softmax over one key, i.e. out_proj(v)).
    model.cfg.vv_attention_axis = "tokens"
    fixed, _ = model.stage1_features(x)
    fixed1, _ = model.stage1_features(x[:1])
    model.cfg.vv_attention_axis = "batch"
    ref_fixed, n_blocks = released_stage1_fixed(rel_clip, surgery, x)
    compare(
        f"stage-1 all levels, batch {b}, axis=tokens",
        fixed,
        ref_fixed,
        f"vs released Attention fed batch-first ({n_blocks} surgery blocks)",
    )
    compare(
        "axis=tokens: image 0 in batch vs alone",
        [f[:1] for f in fixed],
        fixed1,
        "fixed variant is batch-independent",
    )
    compare(
        f"axis=tokens vs released, level 24, batch {b}",
        fixed[-1],
        ref[-1],
        f"rel. Frobenius {rel_norm(fixed[-1], ref[-1]):.3g} (expected to differ)",
        check=False,
    )
    compare(
        "axis=tokens vs released, level 24, batch 1",
        fixed1[-1],
        ref1[-1],
        f"rel. Frobenius {rel_norm(fixed1[-1], ref1[-1]):.3g} (expected to differ)",
        check=False,
    )

    # Size of the released defect: image 0's level-24 feature in a batch of n vs alone.
    g = torch.Generator().manual_seed(7)
    for n in sorted({b, *defect_batches}):
        if n <= 1:
            continue
        if n <= b:
            xb, refb = x[:n], (ref if n == b else released_stage1(rel_clip, surgery, x[:n]))
        else:
            extra = torch.randn(n - b, *x.shape[1:], generator=g)
            xb = torch.cat([x, extra])
            refb = released_stage1(rel_clip, surgery, xb)
        for lvl, rb, r1 in zip(LEVELS, refb, ref1, strict=True):
            if lvl not in (6, 24):
                continue
            compare(
                f"released defect: level {lvl}, batch {n} vs 1",
                rb[:1],
                r1,
                f"rel. Frobenius {rel_norm(rb[:1], r1):.3g}",
                check=False,
            )
        if n > b:
            oursb, _ = model.stage1_features(xb)
            compare(f"stage-1 level 24, batch {n}, axis=batch", oursb[-1], refb[-1])
    return ref, ours


@torch.no_grad()
def check_losses(rel, model, stage1, stage2, t_rel, t_our, x, masks, labels):
    fu = rel["fu"]
    size = x.shape[-1]
    b = x.shape[0]
    mask_t = torch.from_numpy(masks).float()
    label_t = torch.from_numpy(labels).long()
    tb_rel = torch.stack([t_rel] * b)  # (B, E, 2): every sample is "bottle"
    tb_our = torch.stack([t_our] * b)
    (ref1, ours1), (seg_rel, det_rel), (seg_our, _) = stage1, *stage2

    # seg loss per level, stage-1 features
    for lvl, fr, fo in zip(LEVELS, ref1, ours1, strict=True):
        lr = fu.calculate_seg_loss(fu.calculate_similarity_map(fr, tb_rel, size), mask_t)
        lo = losses.segmentation_loss(scoring.training_probs(fo, tb_our, size), mask_t)
        compare(f"stage-1 seg loss level {lvl}", lo, lr, f"{lr.item():.6f}")
        lo_same = losses.segmentation_loss(scoring.training_probs(fr, tb_rel, size), mask_t)
        compare(f"stage-1 seg loss level {lvl} (loss only)", lo_same, lr, "same inputs")
    # whole stage-1 objective, released train.py loop re-derived: the loss variable is
    # overwritten per level, so only the last level's seg loss + 0.1 * orthogonality remains.
    orth = (tb_rel[:, :, 0] * tb_rel[:, :, 1]).sum(1).mean() ** 2
    last = fu.calculate_seg_loss(fu.calculate_similarity_map(ref1[-1], tb_rel, size), mask_t)
    ref_total = last + 0.1 * orth
    batch = {"image": x, "mask": mask_t, "label": label_t, "class_name": ["bottle"] * b}
    model.cfg.vv_attention_axis = "batch"
    text_stage, image_stage = model.stages()
    model.start_stage(text_stage, ["bottle"], "MVTec")
    our_total = sum(model.loss(text_stage, batch).values())
    compare("stage-1 total loss (AAClip.loss, text)", our_total, ref_total, f"{ref_total:.6f}")
    compare(
        "disentangle loss",
        losses.disentangle_loss(tb_our),
        orth,
        f"{orth.item():.3e}",
    )

    # stage 2 (released train_image_adapter, re-derived): CE(det @ T) + sum of level seg losses
    logits = torch.matmul(det_rel.unsqueeze(1), tb_rel)[:, 0]
    ref2 = F.cross_entropy(logits, label_t)
    for lvl, fr, fo in zip(LEVELS, seg_rel, seg_our, strict=True):
        lr = fu.calculate_seg_loss(fu.calculate_similarity_map(fr, tb_rel, size), mask_t)
        lo = losses.segmentation_loss(scoring.training_probs(fo, tb_our, size), mask_t)
        compare(f"stage-2 seg loss level {lvl}", lo, lr, f"{lr.item():.6f}")
        ref2 = ref2 + lr
    model._anchors = {"bottle": t_our}  # the fixed adapted anchors start_stage would compute
    our2 = sum(model.loss(image_stage, batch).values())
    compare("stage-2 total loss (AAClip.loss, image)", our2, ref2, f"{ref2.item():.6f}")


def check_blur_versions():
    """Our Gaussian blur vs kornia's on a random map (the kornia on PYTHONPATH)."""
    import kornia

    g = torch.Generator().manual_seed(3)
    m = torch.randn(2, 1, 37, 37, generator=g) * 50
    for k, s in ((7, 1.0), (9, 1.5)):
        ref = kornia.filters.gaussian_blur2d(m, (k, k), (s, s))
        compare(
            f"gaussian blur k={k} sigma={s}",
            scoring.gaussian_blur(m, k, s),
            ref,
            f"kornia {kornia.__version__}, 37x37 grid",
        )


def blob_masks(b: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image 0 normal (empty mask), the others with one rectangular defect each."""
    masks = np.zeros((b, 1, size, size), dtype=np.float32)
    for i in range(1, b):
        r0, c0 = (37 * i) % (size // 2), (53 * i) % (size // 2)
        masks[i, 0, r0 : r0 + size // 4, c0 : c0 + size // 3] = 1
    return masks, (masks.reshape(b, -1).max(1) > 0).astype(np.int64)


def print_table() -> bool:
    w = max(len(r[0]) for r in ROWS)
    print(f"\n{'comparison':<{w}}  {'max|diff|':>10}  {'rel':>10}  status  note")
    print("-" * (w + 48))
    for name, diff, rel, status, note in ROWS:
        d = "" if np.isnan(diff) else f"{diff:.3e}"
        r = "" if np.isnan(rel) else f"{rel:.3e}"
        print(f"{name:<{w}}  {d:>10}  {r:>10}  {status:<6}  {note}")
    failed = [r for r in ROWS if r[3] == "FAIL"]
    print(f"\n{len(ROWS)} rows, {len(failed)} failed (tolerance {TOL:g} relative to max|released|)")
    return not failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument(
        "--defect-batches",
        default="2,16",
        help="batch sizes at which the released batch-axis defect is measured ('' to skip)",
    )
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    rel = released()
    check_prompts_and_tokens(rel)
    check_blur_versions()
    with tempfile.TemporaryDirectory(prefix="aaclip_released_check_") as tmp:
        workdir = Path(tmp)
        rel_clip, surgery, ours_clip, _ = build_backbones(rel, args.image_size, workdir)
        print(f"[{time.time() - t0:.0f}s] backbones built", flush=True)
        g = torch.Generator().manual_seed(5)
        x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g)
        masks, labels = blob_masks(args.batch, args.image_size)
        stage2 = None
        for relu in (False, True):
            adapted, model = build_adapted(rel, rel_clip, ours_clip, relu, workdir)
            t_rel, t_our = check_text(rel, adapted, rel_clip, model)
            tag = f"relu={relu}:"
            maps, probs, feats_rel, feats_our = check_image(
                rel, adapted, model, x, t_rel, t_our, tag
            )
            check_class_scores(rel, maps, probs, masks, labels, tag)
            print(f"[{time.time() - t0:.0f}s] relu={relu} done", flush=True)
            if not relu:
                stage2 = (adapted, model, t_rel, t_our, feats_rel, feats_our)
        adapted, model, t_rel, t_our, feats_rel, feats_our = stage2
        defect = [int(n) for n in args.defect_batches.split(",") if n.strip()]
        stage1 = check_stage1(rel_clip, surgery, model, x, defect)
        print(f"[{time.time() - t0:.0f}s] stage-1 features done", flush=True)
        check_losses(rel, model, stage1, (feats_rel, feats_our), t_rel, t_our, x, masks, labels)
    ok = print_table()
    print(f"total {time.time() - t0:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
