"""Golden numbers of a seeded tiny dpclip model, computed in float64 (`tests/golden/dpclip.json`).

`tests/test_golden.py` runs `compute()` inside `default_dtype(torch.float64)`, so every
parameter, input and intermediate is float64 and no CPU's kernels reach the pinned digits.
Model: as ``tests/golden/aaclip.py`` (``torch.manual_seed(0)``, ``create_backbone("aaclip-tiny",
image_size=64)``, seeded noise on every 1-D backbone parameter, ``torch.manual_seed(0)`` again
before the method), then every GRN gamma / beta drawn from a generator seeded 3 (at the
released init they are 0 and every GRN is the identity). Input: ``torch.manual_seed(1);
torch.randn(2, 3, 64, 64)``; one rectangular defect in image 1. Two training steps (Adam,
lr 5e-4) give the decoupling term without and with prototypes and the momentum update.
"""

from __future__ import annotations

import torch

from aaclip import scoring
from aaclip.backbone import create_backbone
from aaclip.methods.dpclip import DPClip, DPClipConfig
from aaclip.train import Optimiser, train_step

SIZE = 64


def build(**kw) -> DPClip:
    torch.manual_seed(0)
    backbone = create_backbone("aaclip-tiny", image_size=SIZE, precision="fp64")
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in backbone.clip.parameters():
            if p.dim() == 1 and p.numel() > 1:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    torch.manual_seed(0)
    model = DPClip(backbone, DPClipConfig(class_descriptions="plain", **kw)).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.image_adapter.named_parameters():
            if ".grn." in name:
                p.copy_(
                    (0.5 if name.endswith("weight") else 0.05) * torch.randn(p.shape, generator=g)
                )
    return model


def compute() -> dict[str, float]:
    """Every pinned number, from a freshly built seeded model."""
    model = build()
    torch.manual_seed(1)
    x = torch.randn(2, 3, SIZE, SIZE)
    mask = torch.zeros(2, 1, SIZE, SIZE)
    mask[1, 0, 16:40, 8:30] = 1
    out: dict[str, float] = {}

    def pin(name: str, t) -> None:
        out[name] = float(t)

    with torch.no_grad():
        anchors = model.class_anchors("brick", None)
        pin("anchors.abs_sum", anchors.abs().sum())
        pin("anchors.normal_dot_abnormal", anchors[:, 0] @ anchors[:, 1])
        seg, det = model.encode_image(x)
        pin("seg[0].abs_sum", seg[0].abs().sum())
        pin("seg[3][1,5,9]", seg[3][1, 5, 9])
        pin("det.sum", det.sum())
        pin("det[0,11]", det[0, 11])
        amap = scoring.anomaly_map(seg, anchors, SIZE, "industrial")
        pin("map_industrial.sum", amap.sum())
        pin("map_industrial[1,31,17]", amap[1, 31, 17])
        pin("map_medical.sum", scoring.anomaly_map(seg, anchors, SIZE, "medical").sum())
        prob = scoring.image_probability(det, anchors)
        pin("image_probability[0]", prob[0])
        pin("image_probability[1]", prob[1])
        _, scores = scoring.class_scores(amap, prob, "industrial")
        pin("class_scores.score[0]", scores[0])
        batch_axis = build(grn_axis="batch")
        seg_b, _ = batch_axis.encode_image(x)
        pin("grn_batch.seg[0].abs_sum", seg_b[0].abs().sum())

    stage = model.stages()[0]
    opt = Optimiser.for_stage(model, stage)
    model.start_stage(stage, ["brick"], None)
    model.train()
    b = {"image": x, "mask": mask, "label": torch.tensor([0, 1]), "class_name": ["brick"] * 2}
    first = train_step(model, stage, b, opt)
    pin("step1.classification", first["classification"])
    pin("step1.segmentation_level4", first["segmentation_level4"])
    pin("step1.decoupling", first["decoupling"])
    pin("step1.prototype_abnormal.sum", model.prototypes.abnormal.sum())
    second = train_step(model, stage, b, opt)
    pin("step2.loss", second["loss"])
    pin("step2.decoupling", second["decoupling"])
    pin("step2.prototype_normal[0,7]", model.prototypes.normal[0, 7])
    return out
