"""Golden numbers of a seeded tiny clipmpcad model, in float64 (`tests/golden/clipmpcad.json`).

`tests/test_golden.py` runs `compute()` inside `default_dtype(torch.float64)`, so every
parameter, input and intermediate is float64 and no CPU's kernels reach the pinned digits.
Model: ``torch.manual_seed(0)``, ``create_backbone("aaclip-tiny", image_size=64)``, then
``torch.manual_seed(0)`` and ``ClipMPCAD`` in each mode (so the adapter init does not depend
on how much of the stream the backbone drew). Input: ``torch.manual_seed(1); torch.randn(2, 3,
64, 64)``; mask: one rectangle in image 1; memory bank from the x11 variants of image 0.
"""

from __future__ import annotations

import torch

from aaclip.backbone import create_backbone
from aaclip.methods.base import ClassContext, Stage
from aaclip.methods.clipmpcad import ClipMPCAD, ClipMPCADConfig

SIZE = 64


@torch.no_grad()
def compute() -> dict[str, float]:
    torch.manual_seed(0)
    backbone = create_backbone("aaclip-tiny", image_size=SIZE, precision="fp64")
    torch.manual_seed(1)
    x = torch.randn(2, 3, SIZE, SIZE)
    mask = torch.zeros(2, SIZE, SIZE)
    mask[1, 16:40, 8:30] = 1
    out: dict[str, float] = {}
    for mode in ("sequence", "tokenwise"):
        torch.manual_seed(0)
        extra = ("medical_findings",) if mode == "sequence" else ()
        m = ClipMPCAD(backbone, ClipMPCADConfig(madff_mode=mode, extra_prompt_files=extra))
        m.eval()
        anchors = m.class_anchors("Brain", None)
        ctx = ClassContext("Brain", "Brain", "medical", True, anchors)
        seg, det = m.encode_image(x)
        pred = m.predict(x, ctx)
        out[f"{mode}.anchors.sum"] = float(anchors.sum())
        out[f"{mode}.seg[0].abs_sum"] = float(seg[0].abs().sum())
        out[f"{mode}.det[-1][1,5,9]"] = float(det[-1][1, 5, 9])
        out[f"{mode}.maps.sum"] = float(pred.maps.sum())
        out[f"{mode}.scores[0]"] = float(pred.scores[0])
        if mode == "sequence":
            m.fit_memory(ctx, x[:1])
            mem = m.predict(x, ctx).extra["memory_map"]
            out["sequence.memory_map.sum"] = float(mem.sum())
            stage = Stage("adapters", 1, 2, 1e-3)
            batch = {
                "image": x,
                "label": torch.tensor([0, 1]),
                "mask": mask,
                "class_name": ["Brain", "Brain"],
                "class_has_masks": [True, True],
            }
            with torch.enable_grad():
                terms = m.loss(stage, batch)
            out["sequence.loss.detection"] = float(terms["detection"])
            out["sequence.loss.segmentation"] = float(terms["segmentation"])
    return out
