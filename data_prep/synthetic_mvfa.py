"""Six tiny medical sets in MVFA-AD's layout, part of the embedded synthetic dataset.

Under ``<out>/mvfa`` the builder writes, for each object of :data:`data_prep.mvfa.OBJECTS`:

- ``<Obj>_AD/{valid,test}/{good,Ungood}/img/<name>``: crops of one bundled photo, the
  Ungood ones with a synthetic defect (``.jpeg`` for Retina_OCT2017, else ``.png``; file
  names styled like MVFA's, e.g. ``00124_60.png``, ``NORMAL-5171640-1.jpeg``);
- ``<Obj>_AD/{valid,test}/Ungood/anomaly_mask/<same name>`` for Brain, Liver and
  Retina_RESC (the segmentation sets); the three others are classification-only;
- ``fewshot_seed/<Obj>/<k>-shot.txt`` for k in :data:`SHOTS`, in the released format
  (``a-0: f1 ... fk`` and ``n-0: ...``, no final newline, normal line first where the
  release has it first);
- ``<Obj>_AD/test.jsonl`` and ``<Obj>_AD/<k>-shot.jsonl``: exactly what
  ``python -m data_prep.mvfa --root <Obj>_AD --shots fewshot_seed`` writes.

The valid split holds :data:`VALID` images per label, so every k draws a true subset.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep import mvfa
from data_prep._common import write_records
from data_prep.synthetic import (
    DEFECTS,
    SOURCES,
    Source,
    _crop,
    _defect,
    _visible,
    load_photo,
    write_file,
)

SHOTS = (2, 4, 8, 16)
VALID = 17  # images per label in valid: > the largest k
TEST = 8  # images per label in test
FOLDER = "mvfa"
SEED_FOLDER = "fewshot_seed"
NORMAL_FIRST = {"Retina_OCT2017", "Chest", "Histopathology"}
"""Seed files that list ``n-0`` before ``a-0`` (all k but Histopathology's 4-shot)."""


@dataclass(frozen=True)
class MvfaSet:
    """One set: the synthetic class whose photo it crops, and whether it is made grey."""

    source: str  # key of data_prep.synthetic.SOURCES
    grey: bool = False


SETS: dict[str, MvfaSet] = {
    "Brain": MvfaSet("phantom"),
    "Liver": MvfaSet("moon"),
    "Retina_RESC": MvfaSet("microaneurysms"),
    "Retina_OCT2017": MvfaSet("retina", grey=True),
    "Chest": MvfaSet("cell"),
    "Histopathology": MvfaSet("ihc"),
}


def _hex(rng: np.random.Generator, n: int) -> str:
    return "".join("0123456789abcdef"[i] for i in rng.integers(0, 16, n))


def _name(obj: str, label: int, rng: np.random.Generator) -> str:
    """A file name in the style of the object's released files."""
    if obj == "Brain":
        return f"{rng.integers(1, 1700):05d}_{rng.choice([60, 70, 80, 90, 99])}.png"
    if obj in ("Liver", "Retina_RESC"):
        return f"{rng.integers(1, 16)}_{rng.integers(1, 600)}.png"
    if obj == "Retina_OCT2017":
        kind = "NORMAL" if label == 0 else str(rng.choice(["CNV", "DME", "DRUSEN"]))
        return f"{kind}-{rng.integers(1000, 9999999)}-{rng.integers(1, 20)}.jpeg"
    if obj == "Chest":
        uid = "-".join(_hex(rng, n) for n in (8, 4, 4, 4, 12))
        kind = "Normal-" if label == 0 else str(rng.choice(["Lung_Opacity_", "No-Not-Normal_"]))
        return f"{kind}{uid}.png"
    return f"{rng.integers(1, 1500)}.png"


def _encode(a: np.ndarray, suffix: str) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    img.save(buf, format="JPEG" if suffix == ".jpeg" else "PNG", quality=90)
    return buf.getvalue()


def _anomaly(
    photo: Image.Image, src: Source, kind: str, rng: np.random.Generator, size: int, donors: list
) -> tuple[np.ndarray, np.ndarray]:
    for _ in range(50):
        base = _crop(photo, src, rng, size)
        img, mask = _defect(kind, base, rng, photo, src, donors)
        if _visible(base, img, mask):
            return img, mask
    raise RuntimeError(f"MVFA synthetic: could not make a visible {kind} defect")


def seed_text(normal: list[str], anomalous: list[str], normal_first: bool) -> str:
    """A seed file's text in the released format (two lines, no final newline)."""
    lines = [f"a-0: {' '.join(anomalous)}", f"n-0: {' '.join(normal)}"]
    return "\n".join(lines[::-1] if normal_first else lines)


def seed_path(base: Path, obj: str, k: int) -> Path:
    """``base/fewshot_seed/<obj>/<k>-shot.txt``."""
    return base / SEED_FOLDER / obj / f"{k}-shot.txt"


def _build_set(
    obj: str, seed: int, size: int, photos: dict[str, Image.Image], base: Path
) -> tuple[dict, set[Path]]:
    spec = SETS[obj]
    src = SOURCES[spec.source]
    root = base / f"{obj}_AD"
    rng = np.random.default_rng([seed, zlib.crc32(f"mvfa/{obj}".encode())])
    donors = [(photos[o], SOURCES[s.source]) for o, s in SETS.items() if o != obj]
    segmentation = obj in mvfa.SEGMENTATION
    suffix = mvfa.image_suffix(obj)
    written: set[Path] = set()
    used: set[str] = set()
    names: dict[tuple[str, int], list[str]] = {}

    def save(path: Path, data: bytes) -> None:
        write_file(path, data)
        written.add(path)

    for split, count in (("valid", VALID), ("test", TEST)):
        for label, group in ((0, "good"), (1, "Ungood")):
            kinds = [str(k) for k in np.resize(DEFECTS, count)]
            rng.shuffle(kinds)
            names[split, label] = []
            for kind in kinds:
                name = _name(obj, label, rng)
                while name in used:
                    name = _name(obj, label, rng)
                used.add(name)
                names[split, label].append(name)
                if label == 0:
                    img = _crop(photos[obj], src, rng, size)
                else:
                    img, mask = _anomaly(photos[obj], src, kind, rng, size, donors)
                    if segmentation:
                        mask_png = _encode(mask.astype(np.float64) * 255, ".png")
                        save(root / split / group / "anomaly_mask" / name, mask_png)
                save(root / split / group / "img" / name, _encode(img, suffix))

    records = {"test": "test.jsonl"}
    for k in SHOTS:
        pick = np.random.default_rng([seed, zlib.crc32(f"mvfa/{obj}/{k}-shot".encode())])
        normal = [str(n) for n in pick.choice(names["valid", 0], k, replace=False)]
        anomalous = [str(n) for n in pick.choice(names["valid", 1], k, replace=False)]
        first = obj in NORMAL_FIRST and not (obj == "Histopathology" and k == 4)
        save(seed_path(base, obj, k), seed_text(normal, anomalous, first).encode())
        records[f"{k}-shot"] = f"{k}-shot.jsonl"
    written |= {root / name for name in records.values()}
    info = {
        "folder": f"{FOLDER}/{obj}_AD",
        "source_file": src.file,
        "masks": segmentation,
        "suffix": suffix,
        "valid": {"normal": VALID, "anomalous": VALID},
        "test": {"normal": TEST, "anomalous": TEST},
        "records": records,
    }
    return info, written


def _write_records(base: Path, obj: str) -> None:
    """The records ``data_prep.mvfa`` makes of one set and its seed files."""
    root = base / f"{obj}_AD"
    write_records(root / "test.jsonl", mvfa.convert(root))
    for k in SHOTS:
        write_records(root / f"{k}-shot.jsonl", mvfa.shot_records(root, seed_path(base, obj, k)))


def build_mvfa(out: Path, seed: int = 0, size: int = 96) -> dict:
    """Write the six sets, seed files and records under ``out/mvfa``; returns their summary.

    Files of an older build that this one did not write are removed from ``out/mvfa``.
    """
    base = Path(out) / FOLDER
    photos = {o: load_photo(SOURCES[s.source].file, o, s.grey) for o, s in SETS.items()}
    sets, written = {}, set()
    for obj in mvfa.OBJECTS:
        sets[obj], files = _build_set(obj, seed, size, photos, base)
        written |= files
    for stale in sorted(p for p in base.rglob("*") if p.is_file()):
        if stale not in written:  # before converting: the converter lists the folders
            stale.unlink()
    for obj in mvfa.OBJECTS:
        _write_records(base, obj)
    return {
        "folder": FOLDER,
        "layout": "<Obj>_AD/{valid,test}/{good,Ungood}/img/*, masks <split>/Ungood/anomaly_mask",
        "seed_files": f"{FOLDER}/{SEED_FOLDER}/<Obj>/<k>-shot.txt",
        "shots": list(SHOTS),
        "sets": sets,
    }
