"""JSONL records, their validation, image/mask loading, the training dataset, few-shot splits.

A record is one JSON object per line, ``{"image_path", "label", "class_name", "mask_path"}``,
paths relative to the dataset root: the released AA-CLIP metadata format, so their files
and ours are interchangeable (their labels are sometimes floats, ``1.0``; those are read as
ints). Every problem is reported as one line naming the file (and line) and what is wrong.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aaclip.augment_x11 import x11_variant
from aaclip.fileio import atomic_write_text
from aaclip.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    EXPANDING,
    JointTransform,
    check_augment,
    color_transform,
    image_to_tensor,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ImageError",
    "Record",
    "RecordDataset",
    "RecordError",
    "check_images",
    "class_names",
    "load_image",
    "load_mask",
    "load_records",
    "read_records",
    "sample_few_shot",
    "unreadable_images",
    "validate_records",
    "write_few_shot",
    "write_records",
]

_KEYS = ("image_path", "label", "class_name")
_SHOW = 5  # names shown in one error line before "… and N more"


class RecordError(ValueError):
    """A records file, a record or a file it points to is wrong; the message is one line."""


class ImageError(RecordError):
    """An image or mask file cannot be read."""


@dataclass(frozen=True)
class Record:
    """One image: path and mask path relative to the dataset root, label 0 normal / 1 anomalous."""

    image_path: str
    label: int
    class_name: str
    mask_path: str | None = None

    def __post_init__(self) -> None:
        if self.label not in (0, 1) or isinstance(self.label, bool):
            raise ValueError(f"label must be 0 or 1, got {self.label!r}")
        object.__setattr__(self, "label", int(self.label))
        if self.mask_path == "":
            object.__setattr__(self, "mask_path", None)

    def to_json(self) -> dict:
        """The record as a JSON object; ``mask_path`` is left out when there is none."""
        out: dict = {
            "image_path": self.image_path,
            "label": self.label,
            "class_name": self.class_name,
        }
        if self.mask_path:
            out["mask_path"] = self.mask_path
        return out


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _shorten(items: Sequence[str], show: int = _SHOW) -> str:
    head = ", ".join(items[:show])
    return head + (f" … and {len(items) - show} more" if len(items) > show else "")


def _parse(obj: object) -> Record:
    """Check one decoded line; raises ValueError with what is wrong (no location)."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in _KEYS if k not in obj]
    if missing:
        raise ValueError(
            "missing key"
            + ("s " if len(missing) > 1 else " ")
            + ", ".join(repr(k) for k in missing)
        )
    label = obj["label"]
    # released metadata writes 0.0 / 1.0; strings and booleans are rejected
    if isinstance(label, bool) or not isinstance(label, int | float) or label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label!r}")
    for key in ("image_path", "class_name"):
        value = obj[key]
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{key} must be a non-empty string, got {value!r}")
    mask = obj.get("mask_path")
    if mask is not None and not isinstance(mask, str):
        raise ValueError(f"mask_path must be a string, got {mask!r}")
    for key, value in (("image_path", obj["image_path"]), ("mask_path", mask)):
        if value and os.path.isabs(value):
            raise ValueError(f"{key} must be relative to the dataset root, got {value!r}")
    return Record(obj["image_path"], int(label), obj["class_name"], mask or None)


def _build_hint(path: Path) -> str:
    """How to make a missing records file of the embedded dataset (`data/synthetic`)."""
    if path.parent.name != "synthetic":
        return ""
    return (
        f" (the embedded synthetic dataset is not built here; build it with "
        f"`aaclip prepare synthetic --out {path.parent}`)"
    )


def read_records(path: str | os.PathLike) -> list[Record]:
    """Parse a JSONL records file; any bad line raises RecordError ``file:line: problem``."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise RecordError(f"{path}: no such records file{_build_hint(Path(path))}") from None
    except OSError as exc:
        raise RecordError(f"{path}: cannot read ({_one_line(exc.strerror or exc)})") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    records = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise RecordError(f"{path}:{lineno}: not UTF-8 text") from None
        if not line:
            continue
        try:
            records.append(_parse(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise RecordError(
                f"{path}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})"
            ) from None
        except ValueError as exc:
            raise RecordError(f"{path}:{lineno}: {_one_line(exc)}") from None
    if not records:
        raise RecordError(f"{path}: no records")
    return records


def validate_records(
    records: Sequence[Record],
    root: str | os.PathLike,
    *,
    source: str = "records",
    require_masks: bool = True,
) -> None:
    """Check records against the files under ``root``; all problems in one RecordError line.

    Reports every missing image or mask file, anomalous records without a mask (unless
    ``require_masks=False``, for classification-only sets) and duplicate image paths.
    """
    if not records:
        raise RecordError(f"{source}: no records")
    root = Path(root)
    if not root.is_dir():
        raise RecordError(f"{source}: dataset root {root} is not a folder")
    missing = []
    for rec in records:
        for rel in (rec.image_path, rec.mask_path):
            if rel and not (root / rel).is_file():
                missing.append(rel)
    missing = list(dict.fromkeys(missing))
    no_mask = [r.image_path for r in records if r.label == 1 and not r.mask_path]
    counts = Counter(os.path.normpath(r.image_path) for r in records)
    dups = [p for p, n in counts.items() if n > 1]

    problems = []
    if missing:
        problems.append(
            f"{len(missing)} missing file{'s' * (len(missing) > 1)} under {root}: "
            + _shorten(missing)
        )
    if no_mask and require_masks:
        problems.append(
            f"{len(no_mask)} anomalous record{'s' * (len(no_mask) > 1)} without "
            "a mask_path (pass require_masks=False for classification-only sets): "
            + _shorten(no_mask)
        )
    if dups:
        problems.append(
            f"{len(dups)} duplicate image path{'s' * (len(dups) > 1)}: " + _shorten(dups)
        )
    if problems:
        raise RecordError(f"{source}: " + "; ".join(problems))


def load_records(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    require_masks: bool = True,
    check_images: bool = True,
) -> list[Record]:
    """Read and validate a records file; ``root`` defaults to the file's folder.

    With ``check_images`` (the default) every image and mask is decoded far enough to find
    truncated or corrupt files (see :func:`check_images`), so a bad file stops the run
    before training or evaluation starts, not hours into it.
    """
    records = read_records(path)
    root = Path(path).parent if root is None else Path(root)
    validate_records(records, root, source=str(path), require_masks=require_masks)
    if check_images:
        _check_record_images(records, root, str(path), None)
    return records


_TRUNCATED_COUNT = re.compile(r"\s*\(\d+ bytes not processed\)")


def _jpeg_ends_cleanly(path: Path) -> bool:
    """A complete JPEG ends with the EOI marker (trailing NUL padding allowed)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64))
        tail = f.read().rstrip(b"\0\r\n ")
    return tail.endswith(b"\xff\xd9")


def _image_problem(path: Path) -> str | None:
    """Why `path` cannot be decoded, or None. Cheap for the common formats:

    PNG: ``verify()`` reads every chunk and checks its CRC (truncation, damaged bytes)
    without inflating. JPEG: the header, plus the end-of-image marker; a file without one
    (truncated, or with trailing data) is decoded at 1/8 scale to tell the two apart.
    Other formats (BMP, TIFF, ...) are decoded in full, as ``load_image`` would.
    """
    try:
        with Image.open(path) as img:
            if img.format == "PNG":
                img.verify()
            elif img.format == "JPEG":
                if not _jpeg_ends_cleanly(path):
                    img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
                    img.load()
            else:
                img.load()
    except FileNotFoundError:
        return "file not found"
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error ...
        text = _one_line(exc).replace(repr(str(path)), "").replace(str(path), "")
        return _TRUNCATED_COUNT.sub("", text).strip(" :") or type(exc).__name__
    return None


def _default_workers() -> int:
    return min(32, 4 * (os.cpu_count() or 1))


def unreadable_images(
    paths: Sequence[str | os.PathLike], workers: int | None = None
) -> dict[str, str]:
    """``{path: reason}`` for every file that cannot be decoded, checked in threads.

    Pillow releases the GIL while reading and decoding, so threads overlap file reads and
    decoding. ``workers`` defaults to 4 per CPU (at most 32). Input order is kept.
    """
    paths = [str(p) for p in paths]
    if not paths:
        return {}
    workers = max(1, min(workers or _default_workers(), len(paths)))
    if workers == 1:
        problems = [_image_problem(Path(p)) for p in paths]
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="aaclip-check") as pool:
            problems = list(pool.map(lambda p: _image_problem(Path(p)), paths, chunksize=16))
    return {p: why for p, why in zip(paths, problems, strict=True) if why is not None}


def check_images(
    records: Sequence[Record],
    root: str | os.PathLike,
    workers: int | None = None,
    *,
    source: str = "records",
) -> None:
    """Decode every image and mask of ``records`` (see :func:`unreadable_images`).

    Raises one ImageError line listing every unreadable file, grouped by the reason.
    """
    _check_record_images(records, Path(root), source, workers)


def _check_record_images(
    records: Sequence[Record], root: Path, source: str, workers: int | None
) -> None:
    rels = list(dict.fromkeys(rel for r in records for rel in (r.image_path, r.mask_path) if rel))
    bad = unreadable_images([root / rel for rel in rels], workers)
    if not bad:
        return
    by_reason: dict[str, list[str]] = {}
    for rel in rels:
        why = bad.get(str(root / rel))
        if why is not None:
            by_reason.setdefault(why, []).append(rel)
    listing = "; ".join(f"{why}: {', '.join(files)}" for why, files in by_reason.items())
    n = len(bad)
    raise ImageError(f"{source}: {n} unreadable image file{'s' * (n > 1)} under {root}: {listing}")


def write_records(path: str | os.PathLike, records: Iterable[Record]) -> None:
    """Write records as JSONL, atomically (temp file + rename)."""
    text = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records)
    atomic_write_text(path, text)


def class_names(records: Iterable[Record]) -> list[str]:
    """Class names in order of first appearance."""
    return list(dict.fromkeys(r.class_name for r in records))


def _open(path: str | os.PathLike, what: str) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()  # decode now, so a truncated file fails here, naming the path
    except FileNotFoundError:
        raise ImageError(f"{path}: {what} file not found") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: cannot read {what}: {_one_line(exc)}") from None
    return img


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Map the grey levels of a 16-bit, 32-bit int or float image to 0..255."""
    a = a.astype(np.float64)
    top = float(a.max()) if a.size else 0.0
    if mode.startswith("I;16") or (mode == "I" and 255 < top <= 65535):
        a = a / 257.0  # full 16-bit range: 65535 -> 255
    elif mode == "F" and top <= 1.0:
        a = a * 255.0
    elif top > 255:
        a = a * (255.0 / top)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open any common image as 8-bit RGB.

    Grey, palette, BMP, JPEG: converted. RGBA/LA: alpha dropped (as the released code's
    ``convert("RGB")``). 16-bit (I;16*): divided by 257, so 65535 maps to 255. 32-bit ``I``:
    as 8-bit if it fits, /257 if it fits 16 bits, else scaled by its max. Float ``F``: x255
    if within [0, 1], else scaled by its max. EXIF orientation is ignored, as released.
    """
    img = _open(path, "image")
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        a = np.asarray(img)
        img = Image.fromarray(_to_uint8(a, img.mode))
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids Pillow's warning; the alpha is dropped below
    return img.convert("RGB") if img.mode != "RGB" else img


def load_mask(path: str | os.PathLike, size: int) -> torch.Tensor:
    """A (1, size, size) float mask in {0, 1}: resized NEAREST, then any non-zero pixel → 1.

    Any mode: grey, 16-bit, palette (by colour), RGB/RGBA (non-zero in any colour channel).
    """
    img = _open(path, "mask")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    a = np.asarray(img)
    if a.ndim == 3:  # RGB(A) / LA: alpha never marks a defect
        a = a[..., :3] if a.shape[-1] >= 3 else a[..., :1]
        a = a.any(axis=-1)
    binary = Image.fromarray((a != 0).astype(np.uint8) * 255, mode="L")
    binary = binary.resize((size, size), Image.Resampling.NEAREST)
    return torch.from_numpy(np.asarray(binary) != 0).float().unsqueeze(0)


class RecordDataset(torch.utils.data.Dataset):
    """Images and masks of records as the released AA-CLIP code prepares them.

    ``augment``: "none" (evaluation), "geometric" (stage 1), "geometric+color" (stage 2),
    "mvfa_x11" (every record expanded into MVFA's 11 fixed variants; masks warped bilinearly,
    not re-binarised). Normal records, and anomalous ones without a mask, get an all-zero
    mask; ``has_mask`` tells the two apart, and ``class_has_masks`` says whether every
    anomalous record of the item's class has a mask (False: a classification-only set).
    Validate the records first (``load_records``): this class assumes the files exist.
    """

    def __init__(
        self,
        records: Sequence[Record],
        root: str | os.PathLike,
        image_size: int,
        augment: str = "none",
        mean: Sequence[float] | None = CLIP_MEAN,
        std: Sequence[float] | None = CLIP_STD,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        check_augment(augment)
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.records = list(records)
        self.root = Path(root)
        self.image_size = image_size
        self.augment = augment
        self.mean, self.std = mean, std
        self.dtype = dtype  # the method's: augmentation runs in it too (fp64 is portable)
        self._color = color_transform() if augment == "geometric+color" else None
        self._joint = JointTransform() if augment in ("geometric", "geometric+color") else None
        self.expand = EXPANDING.get(augment, 1)
        self.class_has_masks = {
            name: all(r.mask_path for r in self.records if r.class_name == name and r.label == 1)
            for name in class_names(self.records)
        }

    def __len__(self) -> int:
        return len(self.records) * self.expand

    def record(self, index: int) -> Record:
        """The record behind item ``index`` (expanding recipes repeat each record)."""
        return self.records[index // self.expand]

    def __getitem__(self, index: int) -> dict:
        rec = self.record(index)
        s = self.image_size
        img = load_image(self.root / rec.image_path)
        if self._color is not None:
            img = self._color(img)
        image = image_to_tensor(img, s, self.mean, self.std, self.dtype)
        has_mask = rec.label == 1 and bool(rec.mask_path)
        mask = load_mask(self.root / str(rec.mask_path), s) if has_mask else torch.zeros(1, s, s)
        mask = mask.to(self.dtype)
        if self._joint is not None:
            image, mask = self._joint(image, mask)
        if self.augment == "mvfa_x11":
            image, mask = x11_variant(index % self.expand, image, mask)
        return {
            "image": image,
            "mask": mask,
            "label": torch.tensor(rec.label, dtype=torch.int64),
            "class_name": rec.class_name,
            "image_path": rec.image_path,
            "has_mask": has_mask,
            "class_has_masks": self.class_has_masks[rec.class_name],
        }


def _shot_counts(k: int) -> tuple[int, int]:
    """(normal, anomalous) per class for k-shot: 1:1, the odd one goes to normal."""
    if k < 1:
        raise ValueError(f"k must be a positive number of shots, got {k}")
    return k - k // 2, k // 2


def sample_few_shot(records: Sequence[Record], k: int, seed: int) -> list[Record]:
    """k images per class, half normal and half anomalous (odd k: one more normal).

    2-shot = 1 normal + 1 anomalous; 1-shot = 1 normal. Each class draws from its own
    stream seeded by (seed, class name) over its records sorted by path, so the result
    does not depend on record order or on the other classes. Output keeps input order.
    """
    n_norm, n_anom = _shot_counts(k)
    chosen: set[int] = set()
    for name in class_names(records):
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
        for label, need in ((0, n_norm), (1, n_anom)):
            pool = sorted(
                (i for i, r in enumerate(records) if r.class_name == name and r.label == label),
                key=lambda i: records[i].image_path,
            )
            if len(pool) < need:
                kind = "normal" if label == 0 else "anomalous"
                raise RecordError(
                    f"class {name!r}: {k}-shot needs {need} {kind} images, found {len(pool)}"
                )
            chosen.update(pool[j] for j in rng.choice(len(pool), size=need, replace=False))
    return [r for i, r in enumerate(records) if i in chosen]


def write_few_shot(
    records: Sequence[Record], k: int, seed: int, out_dir: str | os.PathLike
) -> Path:
    """Sample k-shot and write ``out_dir/<k>-shot.jsonl``; returns that path."""
    path = Path(out_dir) / f"{k}-shot.jsonl"
    write_records(path, sample_few_shot(records, k, seed))
    return path
