"""Apply a trained checkpoint (any method) to a user's own images: heat-map overlays + a CSV."""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from aaclip import checkpoints as ck
from aaclip import data, scoring
from aaclip.calibration import Calibration
from aaclip.config import ExperimentConfig
from aaclip.evaluate import load_methods
from aaclip.fileio import atomic_write_text
from aaclip.methods import InputSpec, Prediction
from aaclip.runtime import pick_device
from aaclip.transforms import image_to_tensor

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def collect_images(
    inputs: list[str | Path],
    *,
    exclude: Sequence[str | Path] = (),
    report: Callable[[str], None] | None = None,
) -> list[Path]:
    """Image files from a mix of files and folders (folders searched recursively, sorted).

    Nothing under an `exclude` folder (the output folder) is ever read back as input. In
    folders, files that are not images (other suffixes, hidden files) are skipped with one
    count. Every image is checked (`data.unreadable_images`); a corrupt one is reported and
    skipped, so the good images are still scored. `report` gets each one-line note
    (default: printed to stderr).
    """
    report = report or _note
    skip = [Path(e).resolve() for e in exclude]

    def excluded(path: Path) -> bool:
        resolved = path.resolve()
        return any(resolved == s or s in resolved.parents for s in skip)

    found: list[Path] = []
    others: dict[str, int] = {}
    ignored = 0
    for item in map(Path, inputs):
        if item.is_dir():
            for p in sorted(item.rglob("*")):
                if not p.is_file():
                    continue
                if excluded(p):
                    ignored += 1
                elif p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
                    found.append(p)
                else:
                    kind = p.suffix.lower() if p.suffix and not p.name.startswith(".") else "hidden"
                    others[kind] = others.get(kind, 0) + 1
        elif item.is_file():
            if excluded(item):
                ignored += 1
            else:
                found.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such image or folder")
    found = list(dict.fromkeys(found))
    if ignored:
        report(f"skipped {ignored} file{'s' * (ignored > 1)} in the output folder {skip[0]}")
    if others:
        n = sum(others.values())
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(others.items()))
        report(
            f"skipped {n} file{'s' * (n > 1)} that "
            + ("are not images" if n > 1 else "is not an image")
            + f" ({kinds})"
        )
    bad = data.unreadable_images(found)
    for path, why in bad.items():
        report(f"skipped {path}: unreadable image ({why})")
    good = [p for p in found if str(p) not in bad]
    if not good:
        raise FileNotFoundError(
            f"no readable images ({', '.join(sorted(IMAGE_SUFFIXES))}) in "
            f"{', '.join(map(str, inputs))}"
        )
    return good


def _note(message: str) -> None:
    print(f"aaclip: note: {message}", file=sys.stderr)


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The image with a jet-coloured heat map (values in [0, 1]) blended on top."""
    base = np.asarray(image.convert("RGB").resize(heat.shape[::-1], Image.BICUBIC), np.float32)
    colour = colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255
    return Image.fromarray((alpha * base + (1 - alpha) * colour).astype(np.uint8))


@torch.no_grad()
def predict_files(
    checkpoint: str | Path,
    inputs: list[str | Path],
    description: str,
    out_dir: str | Path,
    domain: str = "industrial",
    weights: str | None = None,
    device: str | None = None,
    batch_size: int = 8,
    calibration: Calibration | None = None,
) -> Path:
    """Score images with a checkpoint; write `overlays/*.png` and `scores.csv`; return the CSV.

    Maps and scores are min-max normalised over the images given (the protocol's per-class
    rule), so pass all images of one kind together. With a single image only raw values exist.
    With a `calibration` of the class, each image also gets its calibrated score, its label
    and a binary mask (`masks/*.png`), which depend on that image alone.
    """
    meta = ck.read_meta(checkpoint)
    if "config" not in meta:
        raise ck.CheckpointMismatchError(f"{checkpoint}: no aaclip metadata; not our checkpoint")
    cfg = ExperimentConfig.from_dict(meta["config"])
    if weights is not None:
        cfg.backbone.weights = weights
    dev = pick_device(device)
    method = next(iter(load_methods(cfg, [checkpoint], dev).values()))
    ctx = method.prepare_class(description, None, domain, description=description)
    files = collect_images(inputs, exclude=[out_dir])  # never re-read our own overlays
    raw = score_files(lambda x: method.predict(x, ctx), files, method.input_spec(), dev, batch_size)
    norm_maps, scores = method.class_scores(raw, ctx)
    return write_predictions(files, raw, norm_maps, scores, out_dir, calibration)


@torch.no_grad()
def score_files(
    predict: Callable[[torch.Tensor], Prediction],
    files: list[Path],
    spec: InputSpec,
    device: torch.device,
    batch_size: int = 8,
) -> Prediction:
    """Raw outputs (on the CPU) of `predict` on the images, read and preprocessed by `spec`,
    in batches."""
    parts = []
    for i in range(0, len(files), batch_size):
        chunk = files[i : i + batch_size]
        images = torch.stack(
            [
                image_to_tensor(data.load_image(p), spec.image_size, spec.mean, spec.std)
                for p in chunk
            ]
        ).to(device)
        parts.append(predict(images).to(torch.device("cpu")))
    return Prediction.cat(parts)


def write_predictions(
    files: list[Path],
    raw: Prediction,
    norm_maps: torch.Tensor,
    scores: torch.Tensor,
    out_dir: str | Path,
    calibration: Calibration | None = None,
) -> Path:
    """`overlays/*.png` and `scores.csv` (plus `masks/*.png` with a calibration); the CSV."""
    raw_maps, raw_probs = raw.maps, raw.scores
    single = len(files) == 1
    if single:  # nothing to normalise against: show the map on its own range, keep raw values
        norm_maps = scoring.minmax(raw_maps)
    out_dir = Path(out_dir)
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    if calibration is not None:
        (out_dir / "masks").mkdir(exist_ok=True)
    rows = []
    for k, path in enumerate(files):
        name = f"{k:04d}_{path.stem}.png"
        overlay(data.load_image(path), norm_maps[k].numpy()).save(out_dir / "overlays" / name)
        row = {
            "image": str(path),
            "score": "" if single else f"{scores[k].item():.6f}",
            "raw_image_probability": f"{raw_probs[k].item():.6f}",
            "raw_map_max": f"{raw_maps[k].max().item():.6f}",
            "overlay": f"overlays/{name}",
        }
        if calibration is not None:
            mask = calibration.mask(raw_maps[k].numpy())
            Image.fromarray(mask.astype(np.uint8) * 255).save(out_dir / "masks" / name)
            row["calibrated_score"] = f"{calibration.normalise_score(raw_probs[k].item()):.6f}"
            row["label"] = "anomalous" if calibration.label(raw_probs[k].item()) else "normal"
            row["mask"] = f"masks/{name}"
        rows.append(row)
    csv_path = out_dir / "scores.csv"
    atomic_write_text(csv_path, _csv(rows))
    return csv_path


def _csv(rows: list[dict]) -> str:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
