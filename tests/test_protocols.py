"""Protocols: leave-one-out merging, few-shot settings, checkpoint selection rules."""

from __future__ import annotations

import pandas as pd
import pytest

from aaclip import data, protocols
from aaclip.config import preset


def test_merge_records_keeps_files_reachable_across_roots(synthetic_root, tmp_path):
    out = protocols.merge_records(
        [synthetic_root / "industrial_test.jsonl", synthetic_root / "medical_test.jsonl"],
        tmp_path / "merged" / "all.jsonl",
    )
    merged = data.load_records(out)  # validates: every image and mask exists
    n = len(data.load_records(synthetic_root / "industrial_test.jsonl")) + len(
        data.load_records(synthetic_root / "medical_test.jsonl")
    )
    assert len(merged) == n


def test_leave_one_out_trains_on_the_others(synthetic_root, tmp_path):
    sets = {
        "ind": str(synthetic_root / "industrial_test.jsonl"),
        "med": str(synthetic_root / "medical_test.jsonl"),
        "indtrain": str(synthetic_root / "industrial_train.jsonl"),
    }
    cfg = protocols.leave_one_out(preset("smoke"), sets, "med", tmp_path)
    assert cfg.data.test_records == (sets["med"],) and cfg.data.test_datasets == ("med",)
    train = data.load_records(cfg.data.train_records)
    assert {r.class_name for r in train}.isdisjoint(
        {r.class_name for r in data.load_records(sets["med"])}
    )
    with pytest.raises(ValueError, match="target 'nope'"):
        protocols.leave_one_out(preset("smoke"), sets, "nope", tmp_path)


@pytest.mark.parametrize("k", protocols.FEW_SHOTS)
def test_few_shot_settings(k):
    assert protocols.few_shot(preset("smoke"), k).train.shots == k


def test_few_shot_rejects_zero_and_full_is_none():
    with pytest.raises(ValueError, match="positive"):
        protocols.few_shot(preset("smoke"), 0)
    assert protocols.few_shot(preset("smoke"), None).train.shots is None


def test_select_epoch_best_mean_earliest_tie_and_undefined():
    table = pd.DataFrame(
        {
            "checkpoint": ["e1", "e1", "e2", "e2", "e3", "e3"],
            "class_name": ["mean", "a", "mean", "a", "mean", "a"],
            "pixel_auroc": [0.7, 0.1, 0.8, 0.9, 0.8, 0.2],
        }
    )
    assert protocols.select_epoch(table) == "e2"
    table["pixel_auroc"] = float("nan")
    with pytest.raises(ValueError, match="undefined"):
        protocols.select_epoch(table)
