"""Golden numbers of a seeded tiny aaclip model, computed in float64 (`tests/golden/aaclip.json`).

`tests/test_golden.py` runs `compute()` inside `default_dtype(torch.float64)`, so every
parameter, input and intermediate is float64 and no CPU's kernels reach the pinned digits.
Model: ``torch.manual_seed(0)``, ``create_backbone("aaclip-tiny", image_size=64)``, every 1-D
backbone parameter (biases, LayerNorm, embeddings) shifted by seeded noise so that no bias is
trivially zero, then ``torch.manual_seed(0)`` again and ``AAClip(clip,
AAClipConfig(class_descriptions="plain"))``: the adapter init is seeded explicitly, so the
numbers do not depend on how much of the global random stream ``create_backbone`` consumes.
Input: ``torch.manual_seed(1); torch.randn(2, 3, 64, 64)``; mask: one rectangle in image 1.
"""

from __future__ import annotations

import torch

from aaclip import losses, scoring
from aaclip.backbone import create_backbone
from aaclip.methods.aaclip import AAClip, AAClipConfig

SIZE = 64


@torch.no_grad()
def compute() -> dict[str, float]:
    """Every pinned number, from a freshly built seeded model."""
    torch.manual_seed(0)
    backbone = create_backbone("aaclip-tiny", image_size=SIZE, precision="fp64")
    g = torch.Generator().manual_seed(2)
    for p in backbone.clip.parameters():
        if p.dim() == 1 and p.numel() > 1:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    torch.manual_seed(0)  # adapter init: independent of what create_backbone draws from the stream
    model = AAClip(backbone, AAClipConfig(class_descriptions="plain")).eval()
    torch.manual_seed(1)
    x = torch.randn(2, 3, SIZE, SIZE)
    mask = torch.zeros(2, 1, SIZE, SIZE)
    mask[1, 0, 16:40, 8:30] = 1

    out: dict[str, float] = {}

    def pin(name: str, t: torch.Tensor) -> None:
        out[name] = float(t)

    anchors = model.anchors_from_text("brick")  # (E, 2)
    pin("anchors.sum", anchors.sum())
    pin("anchors.abs_sum", anchors.abs().sum())
    pin("anchors[0,0]", anchors[0, 0])
    pin("anchors[7,1]", anchors[7, 1])
    pin("anchors[47,1]", anchors[47, 1])
    pin("anchors.normal_dot_abnormal", anchors[:, 0] @ anchors[:, 1])
    frozen = model.anchors_from_text("brick", adapted=False)
    pin("frozen_anchors.abs_sum", frozen.abs().sum())
    pin("frozen_anchors[3,1]", frozen[3, 1])

    seg, det = model.encode_image(x)
    pin("seg[0].abs_sum", seg[0].abs().sum())
    pin("seg[3][1,5,9]", seg[3][1, 5, 9])
    pin("det.sum", det.sum())
    pin("det[0,11]", det[0, 11])

    amap = scoring.anomaly_map(seg, anchors, SIZE, "industrial")
    pin("map_industrial.sum", amap.sum())
    pin("map_industrial.max", amap.max())
    pin("map_industrial[0,0,0]", amap[0, 0, 0])
    pin("map_industrial[1,31,17]", amap[1, 31, 17])
    mmap = scoring.anomaly_map(seg, anchors, SIZE, "medical")
    pin("map_medical.sum", mmap.sum())
    pin("map_medical[1,63,40]", mmap[1, 63, 40])

    prob = scoring.image_probability(det, anchors)
    pin("image_probability[0]", prob[0])
    pin("image_probability[1]", prob[1])
    norm_maps, scores = scoring.class_scores(amap, prob, "industrial")
    pin("class_scores.map_sum", norm_maps.sum())
    pin("class_scores.score[0]", scores[0])
    pin("class_scores.score[1]", scores[1])

    for axis in ("batch", "tokens"):
        model.cfg.vv_attention_axis = axis
        feats, emb = model.stage1_features(x)
        pin(f"stage1_{axis}.level2.abs_sum", feats[1].abs().sum())
        pin(f"stage1_{axis}.last.sum", feats[-1].sum())
        pin(f"stage1_{axis}.last[1,20,3]", feats[-1][1, 20, 3])
        pin(f"stage1_{axis}.embedding.sum", emb.sum())
    model.cfg.vv_attention_axis = "batch"

    batch_anchors = torch.stack([anchors, anchors])
    probs = scoring.training_probs(seg[-1], batch_anchors, SIZE)
    pin("training_probs[1,1].sum", probs[1, 1].sum())
    pin("segmentation_loss.stage2_last", losses.segmentation_loss(probs, mask))
    feats, _ = model.stage1_features(x)
    stage1_probs = scoring.training_probs(feats[-1], batch_anchors, SIZE)
    pin("segmentation_loss.stage1_last", losses.segmentation_loss(stage1_probs, mask))
    pin("focal_loss.stage1_last", losses.focal_loss(stage1_probs, mask))
    pin("disentangle_loss", losses.disentangle_loss(batch_anchors))
    return out
