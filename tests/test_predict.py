"""Predicting on a user's folder: the output folder is never input, bad files are skipped."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aaclip.predict import collect_images


def _img(path: Path, seed: int, ext: str = "png") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(path)
    return path


def _user_folder(root: Path) -> Path:
    """Three photos, a note, a hidden file, a truncated photo, and the previous run's output."""
    for i, name in enumerate(("a.png", "b.jpg", "sub/c.PNG")):
        _img(root / name, i)
    (root / "notes.txt").write_text("my photos")
    (root / ".DS_Store").write_bytes(b"\0\1")
    broken = _img(root / "broken.png", 9)
    broken.write_bytes(broken.read_bytes()[:200])
    _img(root / "predictions" / "overlays" / "0000_a.png", 5)  # last run's overlays
    (root / "predictions" / "scores.csv").write_text("image,score\n")
    return root


def test_folder_is_read_safely(tmp_path: Path) -> None:
    root = _user_folder(tmp_path / "photos")
    notes: list[str] = []
    files = collect_images([root], exclude=[root / "predictions"], report=notes.append)
    assert [p.relative_to(root).as_posix() for p in files] == ["a.png", "b.jpg", "sub/c.PNG"]
    assert notes[0] == f"skipped 2 files in the output folder {(root / 'predictions').resolve()}"
    assert notes[1] == "skipped 2 files that are not images (.txt 1, hidden 1)"
    assert notes[2].startswith(f"skipped {root / 'broken.png'}: unreadable image (")
    assert len(notes) == 3


def test_nothing_readable_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no readable images"):
        collect_images([tmp_path], report=lambda m: None)
    with pytest.raises(FileNotFoundError, match="no such image or folder"):
        collect_images([tmp_path / "absent"])


def _checkpoint(tmp_path: Path) -> Path:
    from aaclip import checkpoints as ck
    from aaclip.config import apply_overrides, preset
    from aaclip.methods import create_method

    cfg = apply_overrides(preset("smoke"), ["backbone.image_size=64"])
    model = create_method(cfg, "cpu")
    meta = {"method": model.name, "stage": 2, "epoch": 1, "config": cfg.to_dict()}
    meta["backbone"] = model.backbone.identity
    path = tmp_path / "model.safetensors"
    ck.save_adapters(path, model.adapter_state(), meta)
    return path


def test_predict_twice_in_place_scores_the_same_images_the_same(tmp_path: Path, capsys) -> None:
    from aaclip.predict import predict_files

    ckpt = _checkpoint(tmp_path)
    root = tmp_path / "photos"
    for i, name in enumerate(("a.png", "b.jpg", "c.png")):
        _img(root / name, i)
    broken = _img(root / "broken.png", 9)
    broken.write_bytes(broken.read_bytes()[:200])
    (root / "notes.txt").write_text("x")
    runs = []
    for _ in range(2):  # the second run finds the first run's overlays inside the input folder
        out = predict_files(ckpt, [root], "grass", root / "predictions", device="cpu")
        with open(out) as f:
            runs.append(list(csv.DictReader(f)))
    assert [Path(r["image"]).name for r in runs[1]] == ["a.png", "b.jpg", "c.png"]
    assert runs[0] == runs[1]
    assert len(list((root / "predictions" / "overlays").iterdir())) == 3
    err = capsys.readouterr().err
    assert f"skipped {broken}: unreadable image" in err
    assert "skipped 1 file that is not an image (.txt 1)" in err
    assert "skipped 4 files in the output folder" in err  # 3 overlays and scores.csv
