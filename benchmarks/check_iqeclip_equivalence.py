"""Development check: our IQE-CLIP against reference tensors of the authors' released code.

NOT a test and never run by the test suite. The reference side (hongh0/IQE-CLIP @ b6ddd11,
with the one-line ``Linear1(in_channel=...)`` fix the spec names) runs in a separate
environment that has ``transformers``; it is not part of this repository. It writes, on a
random ViT-L-14-336 saved as safetensors (``torch.manual_seed(0)``; open_clip init), at
240 px, batch 2, fp32, CPU, dropout off:

- ``iqeclip_trainables.pt``: every trainable tensor in the release's checkpoint format;
- ``iqeclip_reference.pt``: the two input images, label and mask, and every intermediate and
  output (g, class tokens, text features, query inputs and outputs, both logit branches, the
  upsampled probabilities, token scores, level-mean maps, blend, blurred and min-maxed pixel
  maps, the zero- and few-shot image scores, the loss terms and small gradients).

This script loads the same backbone file into ``create_backbone("ViT-L-14-336", weights=...,
image_size=240)``, the trainables into ``IQEClip`` through ``load_released`` (no key map),
recomputes everything and prints ``max|ours - released| / max|released|`` per quantity
(tolerance 1e-4). Rows marked ``info`` are not pass/fail: the min-max over two images of a
near-flat map (random backbone: p(abnormal) is about 0.5 everywhere) magnifies ulp-level
differences, and a min-max over two scores is only their order. Exit status 1 if a checked
row exceeds the tolerance.

    PYTHONPATH=. .venv/bin/python benchmarks/check_iqeclip_equivalence.py \\
        [--released /tmp/released] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from aaclip import scoring
from aaclip.backbone import create_backbone
from aaclip.methods.iqeclip import IQEClip, IQEClipConfig, load_released
from aaclip.methods.iqeclip.method import token_score, upsampled_probs

TOL = 1e-4
ROWS: list[tuple[str, float, float, bool]] = []


def compare(name: str, ours, ref, check: bool = True) -> None:
    """Record max|a - b| and max|a - b| / max|b| (lists are concatenated)."""
    if isinstance(ours, list | tuple):
        ours = torch.cat([o.detach().flatten() for o in ours])
        ref = torch.cat([r.flatten() for r in ref])
    a, b = ours.detach().double().cpu(), torch.as_tensor(ref).double()
    if a.shape != b.shape:
        raise SystemExit(f"{name}: shape {tuple(a.shape)} vs released {tuple(b.shape)}")
    diff = (a - b).abs().max().item()
    ROWS.append((name, diff, diff / max(b.abs().max().item(), 1e-30), check))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--released", default="/tmp/released", help="folder of the reference files")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.released)
    ref = torch.load(folder / "iqeclip_reference.pt", map_location="cpu", weights_only=False)
    meta = ref["meta"]
    t0 = time.time()
    backbone = create_backbone(
        "ViT-L-14-336", weights=folder / "vitl14_336_seed0.safetensors", image_size=240
    )
    cfg = IQEClipConfig(
        levels=tuple(meta["features_list"]),
        prompt_len=meta["prompt_len"],
        deep_prompt_len=meta["deep_prompt_len"],
        use_global=meta["use_global"],
    )
    model = IQEClip(backbone, cfg)
    load_released(model, folder / "iqeclip_trainables.pt")
    model.eval()
    print(f"built and loaded in {time.time() - t0:.0f} s; running batch 2 at 240 px")

    compare("template tokens", model.template_tokens[:, :20], torch.tensor(
        [meta["tokens_normal"][:20], meta["tokens_abnormal"][:20]]))  # fmt: skip
    images, size = ref["images"], meta["img_size"]
    with torch.no_grad():
        levels = backbone.levels(cfg.levels)
        tokens = model.clip.visual.forward_intermediates(
            images, indices=[lvl - 1 for lvl in levels], output_fmt="NLC", intermediates_only=True
        )["image_intermediates"]
        out = model.forward_features(images)
        pred = model.predict(images, None)
    compare("patch tokens (pre-ln_post, CLS dropped)", tokens,
            [t[:, 1:] for t in ref["patch_tokens"]])  # fmt: skip
    compare("global feature g", out.global_feature, ref["image_features"])
    compare("class tokens C", out.class_tokens, ref["class_token"])
    compare("text features T_b", out.text, ref["text_embeddings"])
    compare("IQM query inputs", out.queries_in, ref["query_tokens_in"])
    compare("level features F_l", out.patch, ref["patch_tokens_linear"])
    compare("IQM query outputs Q_l", out.queries, ref["query_out"])
    compare("new logits (F.Q)", out.new_logits, ref["new_logits"])
    compare("raw logits (exp(tau) F.T)", out.raw_logits, ref["raw_logits"])
    compare("new probs, upsampled", [upsampled_probs(x, size) for x in out.new_logits],
            ref["new_probs_up"])  # fmt: skip
    compare("raw probs, upsampled", [upsampled_probs(x, size) for x in out.raw_logits],
            ref["raw_probs_up"])  # fmt: skip
    compare("new token scores", [token_score(x) for x in out.new_logits], ref["new_token_scores"])
    compare("raw token scores", [token_score(x) for x in out.raw_logits], ref["raw_token_scores"])
    raw, new = model.level_mean_maps(out, size)
    compare("raw level-mean map", raw, ref["raw_map_levelmean"])
    compare("new level-mean map", new, ref["new_map_levelmean"])
    compare("pixel blend 0.2 raw + 0.8 new", 0.2 * raw + 0.8 * new, ref["pixel_blend"])
    compare("pixel map (blurred, sigma 8)", pred.maps, ref["pixel_blurred"])
    compare("image score zero-shot (raw)", pred.extra["score_tokens"], ref["image_score_zero_raw"])
    compare("image score few-shot (raw)", pred.extra["score_pixels"], ref["image_score_few_raw"])
    compare("pixel map min-max over the 2 images", scoring.minmax(pred.maps), ref["pixel_map"],
            check=False)  # fmt: skip
    compare("image score zero-shot min-max", scoring.minmax(pred.scores),
            ref["image_score_zero"], check=False)  # fmt: skip

    # one segmentation-set step, eval mode (dropout off), as the reference
    batch = {
        "image": images,
        "label": ref["label"].long(),
        "mask": ref["mask"],
        "class_name": ["Brain", "Brain"],
        "has_mask": ref["label"] > 0,
    }
    model.zero_grad(set_to_none=True)
    terms = model.loss(model.stages()[0], batch)
    sum(terms.values()).backward()
    compare("loss: detection", terms["detection"], ref["loss_det"])
    compare("loss: segmentation new", terms["segmentation_new"], ref["loss_seg_new"])
    compare("loss: segmentation raw", terms["segmentation_raw"], ref["loss_seg_raw"])
    ours = dict(model.adapters.named_parameters())
    grads_ref = ref["grads_small"]
    names = {
        n: n.removeprefix("clip.").replace("trainable_layer.", "trainable_linearlayer.")
        for n in grads_ref
    }
    missing = [n for n, m in names.items() if m not in ours or ours[m].grad is None]
    if missing:
        raise SystemExit(f"gradients missing on our side: {missing[:4]}")
    compare(f"gradients ({len(names)} small tensors)", [ours[m].grad for m in names.values()],
            [grads_ref[n] for n in names])  # fmt: skip
    norms = ref["grad_norms"]
    big = {n: n.removeprefix("clip.").replace("trainable_layer.", "trainable_linearlayer.")
           for n, v in norms.items() if v is not None and n not in grads_ref}  # fmt: skip
    compare(f"gradient norms ({len(big)} large tensors)",
            torch.tensor([ours[m].grad.norm().item() for m in big.values()]),
            torch.tensor([norms[n] for n in big]))  # fmt: skip

    width = max(len(r[0]) for r in ROWS)
    print(f"{'quantity':<{width}}  {'max abs diff':>12}  {'rel':>10}  verdict")
    bad = 0
    for name, diff, rel, check in ROWS:
        verdict = ("ok" if rel <= TOL else "FAIL") if check else "info"
        bad += verdict == "FAIL"
        print(f"{name:<{width}}  {diff:12.3e}  {rel:10.3e}  {verdict}")
    took = time.time() - t0
    print(f"{len(ROWS) - bad} of {len(ROWS)} rows within {TOL:g} (or info) in {took:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
