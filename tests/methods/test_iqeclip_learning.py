"""The learning check: the tiny IQE-CLIP smoke model, trained on the embedded medical training
classes, beats chance clearly on the held-out medical classes (zero-shot), on CPU."""

from __future__ import annotations

import json

import pytest

from aaclip import experiment
from aaclip.config import preset


@pytest.mark.slow
def test_iqeclip_smoke_model_beats_chance_on_held_out_medical_classes(synthetic_root, tmp_path):
    cfg = preset("smoke", "iqeclip", data_root=str(synthetic_root))
    table = experiment.run(cfg, tmp_path / "run", aupro=False).table
    rows = table[table.class_name != "mean"].set_index("class_name")
    mean = table[table.class_name == "mean"].iloc[0]
    print(json.dumps(rows[["pixel_auroc", "image_auroc"]].to_dict(), indent=1))
    train_classes = set(
        json.loads((synthetic_root / "dataset.json").read_text())["splits"]["train"]
    )
    assert train_classes.isdisjoint(rows.index) and len(rows) == 3  # held-out classes only
    assert (rows.pixel_auroc > 0.62).all(), rows.pixel_auroc
    assert mean.pixel_auroc > 0.68, mean.pixel_auroc
    assert mean.image_auroc > 0.55, mean.image_auroc
