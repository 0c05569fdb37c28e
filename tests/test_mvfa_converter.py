"""data_prep.mvfa against the spec: OCT2017 ``.jpeg``, masks by file name, bad seed input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from data_prep import mvfa
from data_prep._common import LayoutError

REPO = Path(__file__).resolve().parents[1]


def fake_set(base: Path, obj: str, n: int = 3, valid: bool = True) -> Path:
    """A tiny ``<Obj>_AD`` tree with n images per folder (masks for segmentation sets)."""
    root = base / f"{obj}_AD"
    suffix = mvfa.image_suffix(obj)
    for split in ("valid", "test") if valid else ("test",):
        for group, stem in (("good", "n"), ("Ungood", "a")):
            for i in range(n):
                name = f"{stem}{i}{suffix}"
                path = root / split / group / "img" / name
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("L", (4, 4)).save(path, format="JPEG" if suffix == ".jpeg" else "PNG")
                if group == "Ungood" and obj in mvfa.SEGMENTATION:
                    mask = root / split / group / "anomaly_mask" / name
                    mask.parent.mkdir(parents=True, exist_ok=True)
                    Image.new("L", (4, 4)).save(mask, format="PNG")
    return root


def one_line(exc: pytest.ExceptionInfo[LayoutError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_oct2017_jpeg_and_masks_by_name(tmp_path: Path) -> None:
    root = fake_set(tmp_path, "Retina_OCT2017")
    records = mvfa.convert(root)
    assert {Path(r["image_path"]).suffix for r in records} == {".jpeg"}
    assert not any("mask_path" in r for r in records)
    root = fake_set(tmp_path, "Liver")
    (root / "test/Ungood/anomaly_mask/a0.png").rename(root / "test/Ungood/anomaly_mask/zz.png")
    (root / "test/Ungood/anomaly_mask/a1.png").rename(root / "test/Ungood/anomaly_mask/a0.png")
    with pytest.raises(LayoutError) as exc:  # never paired by listing order
        mvfa.convert(root)
    assert "1 missing: test/Ungood/anomaly_mask/a1.png" in one_line(exc)


def test_seed_file_lists_every_missing_image(tmp_path: Path) -> None:
    root = fake_set(tmp_path, "Brain", n=2)
    seed = tmp_path / "seeds" / "16-shot.txt"
    seed.parent.mkdir()
    gone_a = [f"x{i:02d}.png" for i in range(15)]
    gone_n = [f"y{i:02d}.png" for i in range(16)]
    seed.write_text(f"n-0: {' '.join(gone_n)}\na-0: a0.png {' '.join(gone_a)}")
    with pytest.raises(LayoutError) as exc:
        mvfa.shot_records(root, seed)
    message = one_line(exc)
    assert str(seed) in message and "31 missing: " in message and "more" not in message
    assert all(f"valid/Ungood/img/{n}" in message for n in gone_a)
    assert all(f"valid/good/img/{n}" in message for n in gone_n)


def test_seed_file_for_an_unknown_k(tmp_path: Path) -> None:
    root = fake_set(tmp_path, "Chest")
    seeds = tmp_path / "fewshot_seed" / "Chest"
    seeds.mkdir(parents=True)
    (seeds / "2-shot.txt").write_text("n-0: n0.png n1.png\na-0: a0.png a1.png")
    (seeds / "3-shot.txt").write_text("n-0: n0.png n1.png n2.png\na-0: a0.png a1.png a2.png")
    with pytest.raises(LayoutError) as exc:
        mvfa.seed_files(tmp_path / "fewshot_seed", "Chest")
    message = one_line(exc)
    assert "3-shot.txt" in message and "k in 1, 2, 4, 8, 16" in message
    with pytest.raises(LayoutError) as exc:
        mvfa.shot_records(root, seeds / "3-shot.txt")
    assert str(seeds / "3-shot.txt") in one_line(exc)
    (seeds / "2-shot.txt").write_text("n-0: n0.png n0.png\na-0: a0.png a1.png")
    with pytest.raises(LayoutError) as exc:
        mvfa.shot_records(root, seeds / "2-shot.txt")
    assert "n0.png more than once" in one_line(exc)


def test_set_without_valid(tmp_path: Path) -> None:
    root = fake_set(tmp_path, "Histopathology", valid=False)
    seeds = tmp_path / "fewshot_seed" / "Histopathology"
    seeds.mkdir(parents=True)
    (seeds / "2-shot.txt").write_text("n-0: n0.png n1.png\na-0: a0.png a1.png")
    assert len(mvfa.convert(root)) == 6  # the test split alone still converts
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "data_prep.mvfa", "--root", str(root), "--shots", str(seeds.parent)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "no 'valid' under the root" in lines[0] and str(seeds / "2-shot.txt") in lines[0]
