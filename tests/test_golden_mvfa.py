"""Golden outputs of a seeded tiny MVFA: a refactor that changes any number fails here.

The numbers below were produced once by running this file as a script
(``.venv/bin/python tests/test_golden_mvfa.py`` prints the ``GOLDEN`` table) with the pinned
stack (requirements.lock, CPU, fp32). Tolerance 1e-5 relative (1e-6 absolute near zero). If a
change is meant to alter them, regenerate the table and say why in the commit; the
equivalence with the authors' code is checked by ``benchmarks/check_mvfa_equivalence.py``.

Model: ``torch.manual_seed(0)``, ``create_backbone("aaclip-tiny", image_size=64)``, every 1-D
backbone parameter shifted by seeded noise (no bias trivially zero), then
``torch.manual_seed(111)`` and ``MVFA(backbone, MVFAConfig())``. Inputs:
``torch.Generator().manual_seed(2024)``: 4 test images and 2 support images in [0, 1]
(no normalisation, as released); labels 0, 0, 1, 1; masks: one rectangle in images 2 and 3.
"""

from __future__ import annotations

import pytest
import torch

from aaclip.backbone import create_backbone
from aaclip.methods.base import ClassContext
from aaclip.methods.mvfa import MVFA, MVFAConfig

SIZE = 64

# Produced by `python tests/test_golden_mvfa.py` (see the module docstring).
GOLDEN: dict[str, float] = {
    "anchors_brain.sum": 0.8008803725242615,
    "anchors_brain[3,1]": -0.0015644291415810585,
    "anchors_chest.abs_sum": 12.49874496459961,
    "seg[0].abs_sum": 5260.9404296875,
    "seg[3][1,5,9]": 0.6034069657325745,
    "det[2].sum": 2166.691650390625,
    "Brain.raw_map.sum": 25977.544921875,
    "Brain.raw_map[1,20,33]": 1.3702373504638672,
    "Brain.raw_score[0]": 2.199965476989746,
    "Brain.raw_score[3]": 2.2308578491210938,
    "Brain.memory_map.sum": 4073.08935546875,
    "Brain.zero.score[1]": 0.02843104675412178,
    "Brain.few.map_sum": 6706.0458984375,
    "Brain.few.score[1]": 0.7076306939125061,
    "Brain.few.score[2]": 0.7901049852371216,
    "Chest.raw_map.sum": 23359.279296875,
    "Chest.raw_map[1,20,33]": 1.3826420307159424,
    "Chest.raw_score[0]": 1.4464471340179443,
    "Chest.raw_score[3]": 1.4812374114990234,
    "Chest.memory_score.sum": 1.148017168045044,
    "Chest.zero.score[1]": 0.029043816030025482,
    "Chest.few.map_sum": 8201.1181640625,
    "Chest.few.score[1]": 0.014521908015012741,
    "Chest.few.score[2]": 0.8954493999481201,
    "loss.Brain.detection": 2.9236326217651367,
    "loss.Brain.segmentation": 4.381089210510254,
    "grad.Brain.det1_fc1.abs_sum": 21.131065368652344,
    "grad.Brain.seg0_fc2.abs_sum": 4.640193939208984,
    "loss.Chest.detection": 2.8369550704956055,
    "grad.Chest.det1_fc1.abs_sum": 7.545363903045654,
    "grad.Chest.seg0_fc2.abs_sum": 0.3160819113254547,
}


def compute() -> dict[str, float]:
    """Every pinned number, from a freshly built seeded model."""
    torch.manual_seed(0)
    backbone = create_backbone("aaclip-tiny", image_size=SIZE)
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
        brain = model.class_anchors("Brain", None).float()
        chest = model.class_anchors("Chest", None).float()
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


@pytest.fixture(scope="module")
def computed() -> dict[str, float]:
    return compute()


def test_golden_table_is_complete(computed):
    assert GOLDEN, "run `python tests/test_golden_mvfa.py` and paste its table"
    assert set(computed) == set(GOLDEN)


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_golden_value(computed, key):
    assert computed[key] == pytest.approx(GOLDEN[key], rel=1e-5, abs=1e-6), key


if __name__ == "__main__":
    torch.set_num_threads(1)
    print("GOLDEN = {")
    for k, v in compute().items():
        print(f"    {k!r}: {v!r},")
    print("}")
