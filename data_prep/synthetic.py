"""The embedded dataset: crops of photographs bundled with scikit-image, synthetic defects.

``python -m data_prep.synthetic --out data/synthetic [--seed 0] [--size 96]``

Every class is one photograph shipped inside the scikit-image wheel (read from its package
folder, never downloaded). Normal images are random crops (with flips) resized to ``size``;
anomalous ones get one synthetic defect whose mask is exactly the region of changed pixels:

- ``paste``: a smooth-shaped patch from the same photo at another scale, or from another
  photo of the same split;
- ``noise``: a fractal Perlin-noise region blended with another photo or a noise texture;
- ``scratch``: a thin polyline, much darker or brighter than its surroundings;
- ``blob``: a smooth shape whose intensity/colour is shifted.

Classes are split into disjoint train and test classes in two groups, industrial and
medical, so the zero-shot protocol (train on some classes, test on unseen ones) can run.
The layout mirrors MVTec-AD (``<cls>/test/<good|defect>/NNN.png``, masks
``<cls>/ground_truth/<defect>/NNN_mask.png``); records are in the project's JSONL format.
``mvfa/`` adds six tiny sets in MVFA-AD's medical layout with few-shot seed files
(:mod:`data_prep.synthetic_mvfa`). The same seed and size give byte-identical files.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skimage
from PIL import Image, ImageDraw

from aaclip.data import Record, read_records, write_records
from aaclip.fileio import atomic_write

FORMAT_VERSION = 2  # 2: adds the MVFA sets under mvfa/
N_NORMAL = 24  # per class
N_ANOMALOUS = 24  # per class
DEFECTS = ("paste", "noise", "scratch", "blob")
MIN_SIZE, MAX_SIZE = 32, 256
MIN_MASK_FRACTION = 0.004  # of the image area
MIN_CONTRAST = 25.0  # mean |change| inside the mask, grey levels
MIN_CHANGED = 0.9  # share of mask pixels whose value changed: the mask is the changed region
DEFAULT_MONTAGE = Path("results/figures/synthetic_montage.png")


@dataclass(frozen=True)
class Source:
    """One class: a bundled photograph and where/how large to crop it."""

    file: str
    domain: str  # "industrial" | "medical"
    split: str  # "train" | "test"
    crop: tuple[float, float]  # crop side as a fraction of the region's shorter side
    region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)  # x0, y0, x1, y1
    flip: bool = True  # random horizontal/vertical flips (not for text: mirrored is a defect)


SOURCES: dict[str, Source] = {
    "brick": Source("brick.png", "industrial", "train", (0.25, 0.5)),
    "gravel": Source("gravel.png", "industrial", "train", (0.25, 0.5)),
    "page": Source("page.png", "industrial", "train", (0.55, 0.95), flip=False),
    "grass": Source("grass.png", "industrial", "test", (0.25, 0.5)),
    "coins": Source("coins.png", "industrial", "test", (0.35, 0.7)),
    "moon": Source("moon.png", "industrial", "test", (0.3, 0.6)),
    "ihc": Source("ihc.png", "medical", "train", (0.25, 0.5)),
    "phantom": Source("phantom.png", "medical", "train", (0.4, 0.75), (0.1, 0.05, 0.9, 0.95)),
    # inside the fundus disc, which fills the photo's inscribed circle
    "retina": Source("retina.jpg", "medical", "test", (0.25, 0.45), (0.16, 0.16, 0.84, 0.84)),
    "cell": Source("cell.png", "medical", "test", (0.35, 0.7)),
    "microaneurysms": Source("microaneurysms.png", "medical", "test", (0.6, 1.0)),
}


def _skimage_dir() -> Path:
    return Path(skimage.__file__).parent / "data"


def load_photo(file: str, name: str, grey: bool = False) -> Image.Image:
    """A bundled scikit-image photo as ``L`` (grey content, or ``grey``) or ``RGB``."""
    path = _skimage_dir() / file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: bundled scikit-image photo for class {name!r} missing")
    img = Image.open(path)
    img.load()
    grey = (
        grey
        or img.mode in ("L", "I;16")
        or (img.mode == "RGB" and np.ptp(np.asarray(img).astype(int), axis=-1).max() == 0)
    )
    return img.convert("L" if grey else "RGB")


def _load_source(name: str) -> Image.Image:
    return load_photo(SOURCES[name].file, name)


# -- random shapes and noise ----------------------------------------------------------------


def _perlin(rng: np.random.Generator, size: int, res: int) -> np.ndarray:
    """Gradient (Perlin) noise with ``res`` lattice cells across, sampled on size x size."""
    angles = rng.uniform(0, 2 * np.pi, (res + 1, res + 1))
    grad = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    t = np.arange(size) * (res / size)
    cell = t.astype(int)
    frac = t - cell
    iy, ix, fy, fx = cell[:, None], cell[None, :], frac[:, None], frac[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grad[iy + dy, ix + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    u, v = (6 * f**5 - 15 * f**4 + 10 * f**3 for f in (fy, fx))
    top = corner(0, 0) * (1 - v) + corner(0, 1) * v
    bottom = corner(1, 0) * (1 - v) + corner(1, 1) * v
    return top * (1 - u) + bottom * u


def _fractal(rng: np.random.Generator, size: int, res: int, octaves: int = 3) -> np.ndarray:
    return sum(0.5**o * _perlin(rng, size, res * 2**o) for o in range(octaves))


def _smooth_shape(rng: np.random.Generator, size: int, area: float) -> np.ndarray:
    """A random star-convex blob (wobbly rotated ellipse) covering about ``area`` of the image."""
    r = math.sqrt(area * size * size / math.pi)
    cy, cx = rng.uniform(0.2, 0.8, 2) * size
    aspect, theta = rng.uniform(0.45, 1.0), rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    w = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    u, w = u / (r / math.sqrt(aspect)), w / (r * math.sqrt(aspect))
    phi = np.arctan2(w, u)
    wobble = 1.0 + sum(
        rng.uniform(0, 0.3 / k) * np.cos(k * phi + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)
    )
    return np.hypot(u, w) < wobble


# -- crops and defects -------------------------------------------------------------------


def _crop(
    img: Image.Image, src: Source, rng: np.random.Generator, size: int, scale: float = 1.0
) -> np.ndarray:
    """A random square crop of ``img`` (side scaled by ``scale``), flipped, as float array."""
    w, h = img.size
    x0, y0, x1, y1 = src.region[0] * w, src.region[1] * h, src.region[2] * w, src.region[3] * h
    side = min(rng.uniform(*src.crop) * scale * min(x1 - x0, y1 - y0), x1 - x0, y1 - y0)
    left, top = rng.uniform(x0, x1 - side), rng.uniform(y0, y1 - side)
    out = img.resize(
        (size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)
    )
    a = np.asarray(out, dtype=np.float64)
    flip_h, flip_v = rng.random(2) < 0.5
    if src.flip and flip_h:
        a = a[:, ::-1]
    if src.flip and flip_v:
        a = a[::-1]
    return np.ascontiguousarray(a)


def _match(a: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Give ``a`` the channel layout (grey or RGB) of ``like``."""
    if a.ndim == like.ndim:
        return a
    if like.ndim == 2:
        return a @ np.array([0.299, 0.587, 0.114])
    return np.repeat(a[..., None], 3, axis=-1)


def _blend(base: np.ndarray, other: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    if base.ndim == 3:
        alpha = alpha[..., None]
    return base * (1 - alpha) + other * alpha


def _defect(
    kind: str,
    base: np.ndarray,
    rng: np.random.Generator,
    own: Image.Image,
    own_src: Source,
    donors: list[tuple[Image.Image, Source]],
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one defect of ``kind``; returns (image, mask) with changes only inside mask."""
    size = base.shape[0]
    if kind == "paste":
        mask = _smooth_shape(rng, size, rng.uniform(0.025, 0.08))
        if rng.random() < 0.5:  # same photo, another place, clearly another scale
            scale = rng.choice([rng.uniform(0.35, 0.55), rng.uniform(1.8, 2.6)])
            patch = _crop(own, own_src, rng, size, scale)
        else:
            img, src = donors[rng.integers(len(donors))]
            patch = _crop(img, src, rng, size)
        patch = np.rot90(_match(patch, base), k=int(rng.integers(4)))
        alpha = mask * rng.uniform(0.85, 1.0)
        out = _blend(base, patch, alpha)
    elif kind == "noise":
        window = _smooth_shape(rng, size, rng.uniform(0.08, 0.18))
        noise = _fractal(rng, size, int(rng.integers(3, 6)))
        mask = window & (noise > np.quantile(noise[window], rng.uniform(0.25, 0.5)))
        if rng.random() < 0.5:
            img, src = donors[rng.integers(len(donors))]
            tex = _match(_crop(img, src, rng, size), base)
        else:
            t = _fractal(rng, size, int(rng.integers(6, 12)), octaves=2)
            t = (t - t.min()) / (np.ptp(t) + 1e-9) * 255.0
            tint = rng.uniform(0.4, 1.0, 3) if base.ndim == 3 else 1.0
            tex = _match(t, base) * tint
        out = _blend(base, tex, mask * rng.uniform(0.55, 0.9))
    elif kind == "scratch":
        layer = Image.new("L", (size, size))
        pts = [tuple(rng.uniform(0.15, 0.85, 2) * size)]
        heading = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(2, 5))):
            heading += rng.uniform(-0.7, 0.7)
            step = rng.uniform(0.12, 0.25) * size
            y, x = pts[-1]
            pts.append((y + step * np.sin(heading), x + step * np.cos(heading)))
        width = max(1, round(rng.uniform(1.5, 3.0) * size / 96))
        ImageDraw.Draw(layer).line([(x, y) for y, x in pts], fill=255, width=width, joint="curve")
        mask = np.asarray(layer) > 0
        level = base[mask].mean()
        value = rng.uniform(0, 40) if level > 110 else rng.uniform(215, 255)
        out = _blend(base, np.full_like(base, value), mask * rng.uniform(0.8, 1.0))
    elif kind == "blob":
        mask = _smooth_shape(rng, size, rng.uniform(0.015, 0.06))
        level = base[mask].mean()
        sign = -1.0 if level > 128 else 1.0
        shift = sign * rng.uniform(45, 90)
        if base.ndim == 3:  # a colour change, not only brightness
            shift = shift * rng.uniform(0.2, 1.0, 3)
        out = _blend(base, np.clip(base + shift, 0, 255), mask * rng.uniform(0.75, 1.0))
    else:
        raise ValueError(f"unknown defect {kind!r}")
    out = np.where(mask[..., None] if base.ndim == 3 else mask, out, base)
    return out, mask


def write_file(path: Path, data: bytes) -> None:
    """Atomic write without fsync (the files are regenerable), skipped when unchanged."""
    if not (path.is_file() and path.read_bytes() == data):
        atomic_write(path, data, durable=False)


def _to_png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _visible(base: np.ndarray, out: np.ndarray, mask: np.ndarray) -> bool:
    size = mask.shape[0]
    if mask.sum() < MIN_MASK_FRACTION * size * size:
        return False
    diff = np.abs(np.rint(out) - np.rint(base))
    diff = diff.mean(axis=-1) if diff.ndim == 3 else diff
    return (
        float(diff[mask].mean()) >= MIN_CONTRAST and float((diff[mask] > 0).mean()) >= MIN_CHANGED
    )


def _build_class(
    name: str, seed: int, size: int, photos: dict[str, Image.Image], out: Path
) -> tuple[list[Record], dict, set[Path]]:
    src = SOURCES[name]
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    donors = [
        (photos[n], s)
        for n, s in SOURCES.items()
        if n != name and s.split == src.split and s.domain == src.domain
    ]
    records, written = [], set()

    def save(rel: str, a: np.ndarray) -> None:
        write_file(out / rel, _to_png(a))
        written.add(out / rel)

    for i in range(N_NORMAL):
        rel = f"{name}/test/good/{i:03d}.png"
        save(rel, _crop(photos[name], src, rng, size))
        records.append(Record(rel, 0, name))
    kinds = [str(k) for k in np.resize(DEFECTS, N_ANOMALOUS)]
    rng.shuffle(kinds)
    counter = dict.fromkeys(DEFECTS, 0)
    for kind in kinds:
        for _ in range(50):
            base = _crop(photos[name], src, rng, size)
            img, mask = _defect(kind, base, rng, photos[name], src, donors)
            if _visible(base, img, mask):
                break
        else:
            raise RuntimeError(f"{name}: could not make a visible {kind} defect")
        j = counter[kind]
        counter[kind] += 1
        rel, rel_mask = (
            f"{name}/test/{kind}/{j:03d}.png",
            f"{name}/ground_truth/{kind}/{j:03d}_mask.png",
        )
        save(rel, img)
        save(rel_mask, mask.astype(np.float64) * 255)
        records.append(Record(rel, 1, name, rel_mask))
    counts = {"normal": N_NORMAL, "anomalous": N_ANOMALOUS, "defects": counter}
    return records, counts, written


def build(out: Path, seed: int = 0, size: int = 96) -> dict:
    """Build the dataset into ``out`` (idempotent, atomic per file); returns the summary."""
    from data_prep.synthetic_mvfa import build_mvfa  # imports this module

    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be in {MIN_SIZE}..{MAX_SIZE} px, got {size}")
    out = Path(out)
    photos = {name: _load_source(name) for name in SOURCES}
    by_class, counts, written = {}, {}, set()
    for name in SOURCES:
        by_class[name], counts[name], files = _build_class(name, seed, size, photos, out)
        written |= files
    # a re-run over an older build: drop images this build did not write
    for name in SOURCES:
        for stale in sorted((out / name).rglob("*.png")):
            if stale not in written:
                stale.unlink()

    groups = {
        d: {
            s: [n for n, c in SOURCES.items() if c.domain == d and c.split == s]
            for s in ("train", "test")
        }
        for d in ("industrial", "medical")
    }
    files = {
        "train": [n for n, c in SOURCES.items() if c.split == "train"],
        "test": [n for n, c in SOURCES.items() if c.split == "test"],
    }
    for d, splits in groups.items():
        for s, names in splits.items():
            files[f"{d}_{s}"] = names
    record_files = {}
    for key, names in files.items():
        recs = [r for n in names for r in by_class[n]]
        write_records(out / f"{key}.jsonl", recs)
        record_files[key] = {"file": f"{key}.jsonl", "classes": names, "records": len(recs)}

    summary = {
        "name": "aaclip-synthetic",
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "size": size,
        "source": f"photographs bundled with scikit-image {skimage.__version__} (skimage/data)",
        "layout": "<class>/test/<good|defect>/NNN.png, <class>/ground_truth/<defect>/NNN_mask.png",
        "defect_types": list(DEFECTS),
        "splits": {"train": files["train"], "test": files["test"]},
        "groups": groups,
        "domain": {n: c.domain for n, c in SOURCES.items()},
        "source_files": {n: c.file for n, c in SOURCES.items()},
        "counts": counts,
        "records": record_files,
        "total_images": sum(len(v) for v in by_class.values()),
        "mvfa": build_mvfa(out, seed=seed, size=size),
    }
    text = json.dumps(summary, indent=2) + "\n"
    atomic_write(out / "dataset.json", text.encode())
    return summary


def montage(out_dir: Path, path: Path = DEFAULT_MONTAGE, per_class: int = 6) -> Path:
    """Save a grid of sample images per class (2 normal, rest anomalous, mask outlined)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir, path = Path(out_dir), Path(path)
    summary = json.loads((out_dir / "dataset.json").read_text())
    records = read_records(out_dir / "train.jsonl") + read_records(out_dir / "test.jsonl")
    names = summary["splits"]["train"] + summary["splits"]["test"]
    fig = Figure(figsize=(1.4 * per_class, 1.45 * len(names)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(names), per_class, squeeze=False)
    for row, name in zip(axes, names, strict=True):
        normal = [r for r in records if r.class_name == name and r.label == 0][:2]
        anomal = [r for r in records if r.class_name == name and r.label == 1]
        # one of each defect type first
        anomal.sort(key=lambda r: (int(Path(r.image_path).stem), r.image_path))
        for ax, rec in zip(row, (normal + anomal)[:per_class], strict=False):
            img = np.asarray(Image.open(out_dir / rec.image_path).convert("RGB"))
            ax.imshow(img)
            if rec.mask_path:
                mask = np.asarray(Image.open(out_dir / rec.mask_path)) > 0
                ax.contour(mask, levels=[0.5], colors="#ff2d2d", linewidths=0.6, alpha=0.8)
                ax.set_title(rec.image_path.split("/")[2], fontsize=7, pad=2)
            else:
                ax.set_title("good", fontsize=7, pad=2)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        split = "train" if name in summary["splits"]["train"] else "test"
        row[0].set_ylabel(f"{name}\n{summary['domain'][name]}, {split}", fontsize=7)
    fig.suptitle(
        f"Embedded synthetic dataset (seed {summary['seed']}, {summary['size']} px); "
        "red: ground-truth mask",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))  # room for the title
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    atomic_write(path, buf.getvalue())
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.synthetic", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", type=Path, default=Path("data/synthetic"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=96, help=f"{MIN_SIZE}..{MAX_SIZE}; default 96")
    p.add_argument(
        "--montage",
        type=Path,
        default=DEFAULT_MONTAGE,
        metavar="PATH",
        help=f"figure of samples (default {DEFAULT_MONTAGE})",
    )
    p.add_argument("--no-montage", action="store_true", help="skip the figure")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        summary = build(args.out, seed=args.seed, size=args.size)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"built {summary['total_images']} images, {len(summary['domain'])} classes "
        f"and {len(summary['mvfa']['sets'])} MVFA sets into {args.out} "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    if not args.no_montage:
        print(f"montage: {montage(args.out, args.montage)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
