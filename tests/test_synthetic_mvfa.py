"""The synthetic MVFA sets (data_prep.synthetic_mvfa): released layout, seed files, records."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from PIL import Image

from aaclip.data import load_records
from data_prep import mvfa, synthetic_mvfa


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mvfa")
    return out / "mvfa", synthetic_mvfa.build_mvfa(out, seed=0, size=96)


def test_layout_follows_the_release(built: tuple[Path, dict]) -> None:
    base, summary = built
    assert sorted(summary["sets"]) == sorted(mvfa.OBJECTS)
    for obj in mvfa.OBJECTS:
        root = base / f"{obj}_AD"
        suffix = ".jpeg" if obj == "Retina_OCT2017" else ".png"
        for split, count in (("valid", synthetic_mvfa.VALID), ("test", synthetic_mvfa.TEST)):
            for group in ("good", "Ungood"):
                files = sorted((root / split / group / "img").iterdir())
                assert len(files) == count and {f.suffix for f in files} == {suffix}
                assert Image.open(files[0]).size == (96, 96)
            masks = root / split / "Ungood" / "anomaly_mask"
            if obj in mvfa.SEGMENTATION:  # paired by file name
                names = {p.name for p in (root / split / "Ungood" / "img").iterdir()}
                assert {p.name for p in masks.iterdir()} == names
            else:
                assert not masks.exists()
        assert sorted(p.name for p in root.iterdir()) == sorted(
            ["test", "valid", "test.jsonl"] + [f"{k}-shot.jsonl" for k in synthetic_mvfa.SHOTS]
        )
    assert any(p.name.startswith("NORMAL-") for p in base.rglob("*.jpeg"))


def test_seed_files_in_the_released_format(built: tuple[Path, dict]) -> None:
    base, _ = built
    for obj in mvfa.OBJECTS:
        seeds = base / "fewshot_seed" / obj
        assert sorted(p.name for p in seeds.iterdir()) == sorted(
            f"{k}-shot.txt" for k in synthetic_mvfa.SHOTS
        )
        for k in synthetic_mvfa.SHOTS:
            text = (seeds / f"{k}-shot.txt").read_text()
            lines = text.split("\n")
            assert not text.endswith("\n") and len(lines) == 2
            assert all(re.fullmatch(r"[an]-0: \S+( \S+)*", line) for line in lines)
            normal_first = obj in synthetic_mvfa.NORMAL_FIRST and (obj, k) != ("Histopathology", 4)
            assert lines[0].startswith("n-0:" if normal_first else "a-0:")
            lists = mvfa.parse_seed_file(seeds / f"{k}-shot.txt")
            for key, group in (("a-0", "Ungood"), ("n-0", "good")):
                assert len(set(lists[key])) == k
                assert all((base / f"{obj}_AD/valid/{group}/img" / n).is_file() for n in lists[key])


def test_records_are_what_the_converter_writes(built: tuple[Path, dict], tmp_path: Path) -> None:
    base, summary = built
    for obj in mvfa.OBJECTS:
        root = base / f"{obj}_AD"
        out = tmp_path / obj / "test.jsonl"
        assert (
            mvfa.main(
                ["--root", str(root), "--out", str(out), "--shots", str(base / "fewshot_seed")]
            )
            == 0
        )
        for name in summary["sets"][obj]["records"].values():
            assert (out.parent / name).read_bytes() == (root / name).read_bytes(), (obj, name)
        seg = obj in mvfa.SEGMENTATION
        test = load_records(root / "test.jsonl", require_masks=seg)
        assert {r.label for r in test} == {0, 1} and len(test) == 2 * synthetic_mvfa.TEST
        assert all(r.class_name == obj for r in test)
        for k in synthetic_mvfa.SHOTS:
            shots = load_records(root / f"{k}-shot.jsonl", require_masks=seg)
            assert sorted(r.label for r in shots) == [0] * k + [1] * k
            assert all(r.image_path.startswith("valid/") for r in shots)
            assert all((r.mask_path is not None) == (seg and r.label == 1) for r in shots)


def test_rebuild_is_byte_identical_and_drops_stale_files(built: tuple[Path, dict]) -> None:
    base, summary = built
    before = tree_hash(base)
    stale = base / "Brain_AD" / "test" / "good" / "img" / "99999_60.png"
    stale.write_bytes(b"left over")
    (base / "Liver_AD" / "test.jsonl").write_text("stale\n")
    assert synthetic_mvfa.build_mvfa(base.parent, seed=0, size=96) == summary
    assert not stale.exists() and tree_hash(base) == before
    assert not list(base.rglob("*.tmp"))
