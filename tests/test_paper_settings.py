"""Tables and run records state where the settings differ from the paper's; under `paper`,
`test` writes the measured means beside the published numbers for the targets it ran."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from aaclip.config import apply_overrides, preset
from aaclip.results import deviations


def test_the_papers_own_settings_differ_in_nothing():
    assert deviations(preset("paper")) == []
    assert deviations(preset("paper", "clip")) == []
    assert deviations(preset("paper"), checkpoint="stage2_epoch020") == []


def test_each_kind_of_difference_is_named():
    cfg = apply_overrides(
        preset("paper"),
        [
            "backbone.image_size=336",
            "model.stage2_epochs=15",
            "train.shots=4",
            'data.test_records=["data/MVTec/test.jsonl", "data/VisA/test.jsonl"]',
            'data.test_datasets=["MVTec", "VisA"]',
            "model.vv_attention_axis=tokens",
        ],
    )
    found = deviations(cfg, checkpoint="stage2_epoch010")
    assert found == [
        "image size 336 px (paper 518)",
        "stage image: 15 epochs (paper 20)",
        "4-shot training (paper full-shot)",
        "1 of the paper's 10 targets (without BTAD, MPDD, Brain, Liver, Retina, "
        "Colon_clinicDB, Colon_colonDB, Colon_Kvasir, Colon_cvc300)",
        "targets outside the paper: VisA",
        "checkpoint stage2_epoch010 (paper stage2_epoch020)",
        "model.vv_attention_axis=tokens (paper batch)",
    ]
    selected = deviations(preset("paper"), selected_on_test=True)
    assert selected == ["checkpoint selected on the test set (optimistic)"]
    smoke = deviations(preset("smoke"))
    assert "image size 128 px (paper 518)" in smoke and "stage text: 4 epochs (paper 5)" in smoke


def test_paper_test_writes_beside_published_with_its_deviations(synthetic_root, tmp_path):
    from aaclip.evaluate import evaluate

    recs = [json.loads(x) for x in (synthetic_root / "industrial_test.jsonl").open()]
    one = [r for r in recs if r["class_name"] == recs[0]["class_name"]]
    picked = [r for r in one if r["label"] == 0][:4] + [r for r in one if r["label"] == 1][:4]
    mini = synthetic_root / "mini_industrial.jsonl"
    mini.write_text("".join(json.dumps(r) + "\n" for r in picked))
    cfg = apply_overrides(
        preset("smoke"),
        [
            "backbone.image_size=64",
            f'data.test_records=["{mini}"]',
            'data.test_datasets=["MVTec"]',
            'data.test_domains=["industrial"]',
            "data.train_dataset=VisA",
        ],
    )
    cfg.profile = "paper"  # a paper run with one target, as a user with only MVTec has
    evaluate(cfg, [], tmp_path / "eval", device="cpu", progress=False, aupro=False)
    out = tmp_path / "eval" / "untrained"
    beside = pd.read_csv(out / "beside_published.csv")
    assert set(beside["target"]) == {"MVTec"}  # only the target it ran
    row = beside[beside["metric"] == "pixel_auroc"].iloc[0]
    assert row["method"] == "AA-CLIP" and row["published"] == 91.88
    assert row["difference"] == pytest.approx(row["measured"] - 91.88, abs=1e-3)
    md = (out / "beside_published.md").read_text()
    assert md.startswith("> ") and "Differs from the paper's settings: " in md
    assert "image size 64 px (paper 518)" in md and "1 of the paper's 10 targets" in md
    record = json.loads((out / "MVTec" / "run.json").read_text())
    assert "image size 64 px (paper 518)" in record["deviations_from_paper"]
    assert "image size 64 px" in (out / "MVTec" / "metrics.md").read_text().splitlines()[0]
