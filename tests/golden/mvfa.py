"""Golden numbers of a seeded tiny mvfa model, computed in float64 (`tests/golden/mvfa.json`).

`tests/test_golden.py` runs `compute()` inside `default_dtype(torch.float64)`, so every
parameter, input and intermediate is float64 and no CPU's kernels reach the pinned digits.
Model: ``torch.manual_seed(0)``, ``create_backbone("aaclip-tiny", image_size=64)``, every 1-D
backbone parameter shifted by seeded noise (no bias trivially zero), then
``torch.manual_seed(111)`` and ``MVFA(backbone, MVFAConfig())``. Inputs:
``torch.Generator().manual_seed(2024)``: 4 test images and 2 support images in [0, 1]
(no normalisation, as released); labels 0, 0, 1, 1; masks: one rectangle in images 2 and 3.
"""

from __future__ import annotations

import torch

from aaclip.backbone import create_backbone
from aaclip.methods.base import ClassContext
from aaclip.methods.mvfa import MVFA, MVFAConfig

SIZE = 64


def compute() -> dict[str, float]:
    """Every pinned number, from a freshly built seeded model."""
    torch.manual_seed(0)
    backbone = create_backbone("aaclip-tiny", image_size=SIZE, precision="fp64")
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in backbone.clip.parameters():
            if p.dim() == 1 and p.numel() > 1:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    torch.manual_seed(111)
    model = MVFA(backbone, MVFAConfig()).eval()
    g = torch.Generator().manual_seed(2024)
    images = torch.rand(4, 3, SIZE, SIZE, generator=g)
    supports = torch.rand(2, 3, SIZE, SIZE, generator=g)
    labels = torch.tensor([0, 0, 1, 1])
    masks = torch.zeros(4, 1, SIZE, SIZE)
    masks[2, :, 10:30, 15:40] = 1
    masks[3, :, 40:60, 5:25] = 1
    out: dict[str, float] = {}
    with torch.no_grad():
        brain = model.class_anchors("Brain", None)
        chest = model.class_anchors("Chest", None)
        out["anchors_brain.sum"] = brain.sum().item()
        out["anchors_brain[3,1]"] = brain[3, 1].item()
        out["anchors_chest.abs_sum"] = chest.abs().sum().item()
        seg, det = model.encode_image(images)
        out["seg[0].abs_sum"] = seg[0].abs().sum().item()
        out["seg[3][1,5,9]"] = seg[3][1, 5, 9].item()
        out["det[2].sum"] = det[2].sum().item()
        for obj, anchors, masked in (("Brain", brain, True), ("Chest", chest, False)):
            zero = ClassContext(obj, None, "medical", masked, anchors)
            few = model.fit_memory(ClassContext(obj, None, "medical", masked, anchors), supports)
            pz = model.predict(images, zero)
            pf = model.predict(images, few)
            out[f"{obj}.raw_map.sum"] = pz.maps.sum().item()
            out[f"{obj}.raw_map[1,20,33]"] = pz.maps[1, 20, 33].item()
            out[f"{obj}.raw_score[0]"] = pz.scores[0].item()
            out[f"{obj}.raw_score[3]"] = pz.scores[3].item()
            key = "memory_map" if masked else "memory_score"
            out[f"{obj}.{key}.sum"] = pf.extra[key].sum().item()
            zm, zs = model.class_scores(pz, zero)
            fm, fs = model.class_scores(pf, few)
            out[f"{obj}.zero.score[1]"] = zs[1].item()
            out[f"{obj}.few.map_sum"] = fm.sum().item()
            out[f"{obj}.few.score[1]"] = fs[1].item()
            out[f"{obj}.few.score[2]"] = fs[2].item()
    stage = model.stages()[0]
    model.train()
    for obj, masked in (("Brain", True), ("Chest", False)):
        model.zero_grad(set_to_none=True)
        batch = {
            "image": images,
            "mask": masks,
            "label": labels,
            "class_name": [obj] * 4,
            "class_has_masks": torch.tensor([masked] * 4),
        }
        terms = model.loss(stage, batch)
        for k, v in terms.items():
            out[f"loss.{obj}.{k}"] = v.item()
        sum(terms.values()).backward()
        det_grad = model.det_adapters[1].fc1[0].weight.grad
        out[f"grad.{obj}.det1_fc1.abs_sum"] = det_grad.abs().sum().item()
        # Chest (classification-only): the det loss alone, back-propagated through the seg
        # adapters too (the release's graph; they are left out of the step, not of it)
        seg_grad = model.seg_adapters[0].fc2[0].weight.grad
        out[f"grad.{obj}.seg0_fc2.abs_sum"] = seg_grad.abs().sum().item()
    return out
