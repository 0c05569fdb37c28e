"""Golden outputs of a seeded tiny ClipMPCAD: a refactor that changes any number fails here.

Produced once by running this file as a script (``.venv/bin/python tests/test_golden_clipmpcad.py``
prints the ``GOLDEN`` table) with the pinned stack on CPU, fp32. Tolerance 1e-5 relative (1e-6
absolute). If a change is *meant* to alter the numbers, regenerate and say why in the commit;
the equivalence of the MADFF block with the authors' module is checked separately by
``benchmarks/check_clipmpcad_equivalence.py``.

Model: ``torch.manual_seed(0)``, ``create_backbone("aaclip-tiny", image_size=64)``, then
``torch.manual_seed(0)`` and ``ClipMPCAD`` in each mode (so the adapter init does not depend
on how much of the stream the backbone drew). Input: ``torch.manual_seed(1); torch.randn(2, 3,
64, 64)``; mask: one rectangle in image 1; memory bank from the x11 variants of image 0.
"""

from __future__ import annotations

import pytest
import torch

from aaclip.backbone import create_backbone
from aaclip.methods.base import ClassContext, Stage
from aaclip.methods.clipmpcad import ClipMPCAD, ClipMPCADConfig

SIZE = 64

# Produced by `python tests/test_golden_clipmpcad.py` (see the module docstring).
GOLDEN: dict[str, float] = {
    "sequence.anchors.sum": 0.3534618318080902,
    "sequence.seg[0].abs_sum": 1489.949951171875,
    "sequence.det[-1][1,5,9]": 0.054905954748392105,
    "sequence.maps.sum": 14528.7822265625,
    "sequence.scores[0]": 1.8826546669006348,
    "sequence.memory_map.sum": 4685.775390625,
    "sequence.loss.detection": 2.870349407196045,
    "sequence.loss.segmentation": 4.797674179077148,
    "tokenwise.anchors.sum": 0.36487066745758057,
    "tokenwise.seg[0].abs_sum": 1407.90966796875,
    "tokenwise.det[-1][1,5,9]": 0.02044401876628399,
    "tokenwise.maps.sum": 14404.98046875,
    "tokenwise.scores[0]": 1.8820427656173706,
}


@torch.no_grad()
def compute() -> dict[str, float]:
    torch.manual_seed(0)
    backbone = create_backbone("aaclip-tiny", image_size=SIZE)
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


@pytest.fixture(scope="module")
def computed() -> dict[str, float]:
    return compute()


def test_golden_table_covers_every_computed_number(computed):
    assert sorted(computed) == sorted(GOLDEN)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_value(computed, name):
    assert computed[name] == pytest.approx(GOLDEN[name], rel=1e-5, abs=1e-6), (
        f"{name}: got {computed[name]!r}, golden {GOLDEN[name]!r}; if intended, regenerate "
        "with `python tests/test_golden_clipmpcad.py` (see module docstring)"
    )


if __name__ == "__main__":
    torch.set_num_threads(2)
    print("GOLDEN = {")
    for key, value in compute().items():
        print(f"    {key!r}: {value!r},")
    print("}")
