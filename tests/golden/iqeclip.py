"""Golden numbers of a seeded tiny iqeclip model, computed in float64 (`tests/golden/iqeclip.json`).

`tests/test_golden.py` runs `compute()` inside `default_dtype(torch.float64)`, so every
parameter, input and intermediate is float64 and no CPU's kernels reach the pinned digits.
Model: ``torch.manual_seed(0)``, ``create_backbone("aaclip-tiny", image_size=64)``, every 1-D
backbone parameter shifted by seeded noise (generator seed 2), then ``torch.manual_seed(0)``
and ``IQEClip(backbone)`` in eval mode (dropout off), every adapter LayerNorm jittered
(generator seed 3) so a missing affine shows. Input: ``torch.manual_seed(1); torch.rand(2, 3,
64, 64)``; labels (0, 1); mask: one rectangle in image 1.
"""

from __future__ import annotations

import torch

from aaclip.backbone import create_backbone
from aaclip.methods.base import ClassContext
from aaclip.methods.iqeclip import IQEClip

SIZE = 64


@torch.no_grad()
def build() -> IQEClip:
    torch.manual_seed(0)
    backbone = create_backbone("aaclip-tiny", image_size=SIZE, precision="fp64")
    g = torch.Generator().manual_seed(2)
    for p in backbone.clip.parameters():
        if p.dim() == 1 and p.numel() > 1:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    torch.manual_seed(0)
    model = IQEClip(backbone).eval()
    g = torch.Generator().manual_seed(3)
    for m in model.adapters.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.weight.add_(0.1 * torch.randn(m.weight.shape, generator=g))
            m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


def compute() -> dict[str, float]:
    """Every pinned number, from a freshly built seeded model."""
    model = build()
    torch.manual_seed(1)
    x = torch.rand(2, 3, SIZE, SIZE)
    mask = torch.zeros(2, 1, SIZE, SIZE)
    mask[1, 0, 16:40, 8:30] = 1
    out: dict[str, float] = {}

    def pin(name: str, t: torch.Tensor) -> None:
        out[name] = float(t)

    with torch.no_grad():
        f = model.forward_features(x)
        pred = model.predict(x, ClassContext("x", None, "medical"))
    pin("class_tokens.abs_sum", f.class_tokens.abs().sum())
    pin("text.sum", f.text.sum())
    pin("text[1,0,5]", f.text[1, 0, 5])
    pin("text.normal_dot_abnormal[0]", f.text[0, 0] @ f.text[0, 1])
    pin("queries_in.abs_sum", f.queries_in.abs().sum())
    pin("patch[2][1,7,3]", f.patch[2][1, 7, 3])
    pin("queries[0].abs_sum", f.queries[0].abs().sum())
    pin("queries[3][1,0,7]", f.queries[3][1, 0, 7])
    pin("new_logits[1].sum", f.new_logits[1].sum())
    pin("raw_logits[3][0,10,1]", f.raw_logits[3][0, 10, 1])
    pin("maps.sum", pred.maps.sum())
    pin("maps[1,31,17]", pred.maps[1, 31, 17])
    pin("score_tokens[0]", pred.extra["score_tokens"][0])
    pin("score_tokens[1]", pred.extra["score_tokens"][1])
    pin("score_pixels[1]", pred.extra["score_pixels"][1])
    batch = {"image": x, "mask": mask, "label": torch.tensor([0, 1]),
             "class_name": ["Brain", "Brain"], "has_mask": torch.tensor([False, True])}  # fmt: skip
    with torch.no_grad():
        terms = model.loss(model.stages()[0], batch)
    for name, value in terms.items():
        pin(f"loss.{name}", value)
    return out
