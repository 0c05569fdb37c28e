"""The embedded synthetic dataset: fast, deterministic, valid records, exact non-empty masks."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aaclip.data import RecordDataset, load_records
from data_prep import synthetic

SIZE = 96


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic")
    t0 = time.perf_counter()
    summary = synthetic.build(out, seed=0, size=SIZE)
    elapsed = time.perf_counter() - t0
    print(f"synthetic build: {summary['total_images']} images in {elapsed:.2f} s")
    assert elapsed < 30, f"build took {elapsed:.1f} s"
    return out, summary


def test_deterministic_and_idempotent(built: tuple[Path, dict], tmp_path: Path) -> None:
    out, summary = built
    before = tree_hash(out)
    stale = out / "brick" / "test" / "good" / "999.png"
    stale.write_bytes(b"left over from an older build")
    assert synthetic.build(out, seed=0, size=SIZE) == summary  # rebuild in place
    assert not stale.exists()
    assert tree_hash(out) == before
    assert not list(out.rglob("*.tmp"))
    synthetic.build(tmp_path / "other", seed=1, size=SIZE)
    assert tree_hash(tmp_path / "other") != before


def test_splits_and_summary(built: tuple[Path, dict]) -> None:
    out, summary = built
    train, test = set(summary["splits"]["train"]), set(summary["splits"]["test"])
    assert train and test and not train & test
    assert train | test == set(summary["domain"])
    for group in ("industrial", "medical"):
        g = summary["groups"][group]
        assert g["train"] and g["test"]
        assert all(summary["domain"][c] == group for c in g["train"] + g["test"])
    assert json.loads((out / "dataset.json").read_text()) == summary
    for key, info in summary["records"].items():
        recs = load_records(out / info["file"])  # validates every file and mask
        assert len(recs) == info["records"]
        assert {r.class_name for r in recs} == set(info["classes"])
        if key.endswith("train"):
            assert {r.class_name for r in recs} <= train
        else:
            assert {r.class_name for r in recs} <= test
    for n in summary["counts"].values():
        assert n["normal"] >= 20 and n["anomalous"] >= 20
        assert sum(n["defects"].values()) == n["anomalous"]
    assert 300 <= summary["total_images"] <= 800


def test_images_and_masks(built: tuple[Path, dict]) -> None:
    out, _ = built
    recs = load_records(out / "train.jsonl") + load_records(out / "test.jsonl")
    for r in recs:
        img = Image.open(out / r.image_path)
        assert img.size == (SIZE, SIZE)
        if r.label == 0:
            assert r.mask_path is None
            continue
        mask = np.asarray(Image.open(out / r.mask_path))
        assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 255}
        area = (mask > 0).mean()
        assert 0.003 < area < 0.3, (r.image_path, area)
    item = RecordDataset(recs, out, image_size=64, augment="geometric")[len(recs) - 1]
    assert item["image"].shape == (3, 64, 64) and item["mask"].sum() > 0


def test_montage_written(built: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = built
    path = synthetic.montage(out, tmp_path / "fig" / "montage.png")
    assert path.is_file() and path.stat().st_size > 10_000
    assert Image.open(path).size[1] > Image.open(path).size[0]  # one row per class


def test_cli_rejects_bad_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert synthetic.main(["--out", str(tmp_path), "--size", "8", "--no-montage"]) == 2
    assert "size must be in" in capsys.readouterr().err
