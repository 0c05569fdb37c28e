"""Golden outputs of a seeded tiny IQE-CLIP: a refactor that changes any number fails here.

As ``tests/test_golden.py``: the numbers were produced once with the code at the time and the
pinned stack (requirements.lock: torch 2.14.1, open_clip_torch 3.3.0, CPU, fp32) by running
this file as a script, ``PYTHONPATH=. .venv/bin/python tests/methods/test_iqeclip_golden.py``,
which prints the ``GOLDEN`` table; checked identical in two fresh processes and with 1 and 2
threads. Tolerance: 1e-5 relative (1e-6 absolute near zero). If a change is *meant* to alter
them, regenerate and say why in the commit. Agreement with the authors' code is checked
separately by ``benchmarks/check_iqeclip_equivalence.py`` (a development check, not a test).

Model: ``torch.manual_seed(0)``, ``create_backbone("aaclip-tiny", image_size=64)``, every 1-D
backbone parameter shifted by seeded noise (generator seed 2), then ``torch.manual_seed(0)``
and ``IQEClip(backbone)`` in eval mode (dropout off), every adapter LayerNorm jittered
(generator seed 3) so a missing affine shows. Input: ``torch.manual_seed(1); torch.rand(2, 3,
64, 64)``; labels (0, 1); mask: one rectangle in image 1.
"""

from __future__ import annotations

import pytest
import torch

from aaclip.backbone import create_backbone
from aaclip.methods.base import ClassContext
from aaclip.methods.iqeclip import IQEClip

SIZE = 64

# Produced by `python tests/methods/test_iqeclip_golden.py` (see the module docstring).
GOLDEN: dict[str, float] = {
    "class_tokens.abs_sum": 235.83102416992188,
    "text.sum": 0.5278583765029907,
    "text[1,0,5]": -0.044862523674964905,
    "text.normal_dot_abnormal[0]": 0.9930359125137329,
    "queries_in.abs_sum": 216.6884002685547,
    "patch[2][1,7,3]": 0.2742396593093872,
    "queries[0].abs_sum": 202.2255859375,
    "queries[3][1,0,7]": 0.693734347820282,
    "new_logits[1].sum": 14.785494804382324,
    "raw_logits[3][0,10,1]": -0.7080744504928589,
    "maps.sum": 4112.11767578125,
    "maps[1,31,17]": 0.5022165775299072,
    "score_tokens[0]": 4.089903831481934,
    "score_tokens[1]": 4.100001335144043,
    "score_pixels[1]": 1.0248456001281738,
    "loss.detection": 5.8025431632995605,
    "loss.segmentation_new": 4.26831579208374,
    "loss.segmentation_raw": 4.424345016479492,
}


@torch.no_grad()
def build() -> IQEClip:
    torch.manual_seed(0)
    backbone = create_backbone("aaclip-tiny", image_size=SIZE)
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


@pytest.fixture(scope="module")
def computed() -> dict[str, float]:
    return compute()


def test_golden_table_covers_every_computed_number(computed):
    assert sorted(computed) == sorted(GOLDEN)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_value(computed, name):
    assert computed[name] == pytest.approx(GOLDEN[name], rel=1e-5, abs=1e-6), (
        f"{name}: got {computed[name]!r}, golden {GOLDEN[name]!r}; if intended, regenerate "
        "with `python tests/methods/test_iqeclip_golden.py` (see module docstring)"
    )


if __name__ == "__main__":
    torch.set_num_threads(2)
    print("GOLDEN: dict[str, float] = {")
    for key, value in compute().items():
        print(f"    {key!r}: {value!r},")
    print("}")
