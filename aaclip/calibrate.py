"""`aaclip calibrate`: per-class thresholds and normalisation of a checkpoint, from normals.

Normal images (a folder: one class; a records file: its label-0 records, by class) are scored
one at a time by the method's own per-image score rule (`Method.score_rule`), exactly as
`aaclip predict` scores them (`aaclip.predict.Detector.raw`; a few-shot checkpoint with the
memory bank of its reference normals); `aaclip.calibration.calibrate` then sets the image and
pixel thresholds at the target false-positive rate and the normalisation (threshold -> 0.5,
`0.5 + 0.5 z / (1 + |z|)` with z the distance to the threshold in spreads of the normals).
Anomalous images, when given, only add the achieved true-positive rates. The result is stored
beside the checkpoint (`aaclip.calibration.save_calibration`), tied to it by content hash.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aaclip import data
from aaclip.calibration import (
    Calibration,
    CalibrationMismatchError,
    calibrate,
    calibration_path,
    load_calibration,
    save_calibration,
)
from aaclip.predict import RECORDS_SUFFIX, Detector, _note, collect_images

__all__ = ["CalibrationRun", "calibrate_checkpoint", "gather", "summary_lines"]


@dataclass
class _Class:
    """The inputs of one class: its images and how to build its text."""

    key: str
    class_name: str | None
    description: str | None
    normals: list[Path] = field(default_factory=list)
    anomalies: list[tuple[Path, Path | None]] = field(default_factory=list)


def gather(
    source: str | Path,
    *,
    label: int,
    class_name: str | None = None,
    description: str | None = None,
    report: Callable[[str], None] = _note,
) -> dict[str, list[tuple[Path, Path | None]]]:
    """`{class key: [(image, mask or None)]}` of a folder (one class, named by `class_name`
    or `description`) or of a records file (its records of `label`, by class; `class_name`
    keeps one class)."""
    source = Path(source)
    what = "normal" if label == 0 else "anomalous"
    if str(source).endswith(RECORDS_SUFFIX):
        if description is not None:
            raise ValueError(
                f"{source}: records carry their own classes; --description names the class "
                "of a folder (use --class-name to keep one class of the records)"
            )
        root = source.parent
        records = data.load_records(source, require_masks=False)
        chosen = [r for r in records if r.label == label]
        if class_name is not None:
            chosen = [r for r in chosen if r.class_name == class_name]
        out: dict[str, list[tuple[Path, Path | None]]] = {}
        for r in chosen:
            mask = root / r.mask_path if r.mask_path else None
            out.setdefault(r.class_name, []).append((root / r.image_path, mask))
        if not out:
            which = f" of class {class_name!r}" if class_name else ""
            raise ValueError(f"{source}: no {what} records{which} (label {label})")
        skipped = len(records) - len(chosen)
        if skipped:
            report(f"{source}: used {len(chosen)} {what} records, not the other {skipped}")
        return out
    key = class_name or description
    if key is None:
        raise ValueError(
            f"{source}: a folder is one class; name it with --class-name NAME or --description TEXT"
        )
    return {key: [(p, None) for p in collect_images([source], report=report)]}


@dataclass
class CalibrationRun:
    """What `calibrate_checkpoint` stored, and how long it took."""

    path: Path
    calibrations: dict[str, Calibration]
    checkpoint: Path
    fpr: float
    n_images: int
    seconds: float
    device: str
    mode: str = "zero-shot"  # or "few-shot k=N": the memory bank that scored the normals


def calibrate_checkpoint(
    checkpoint: str | Path,
    normal: str | Path,
    anomalous: str | Path | None = None,
    *,
    fpr: float = 0.01,
    class_name: str | None = None,
    description: str | None = None,
    domain: str | None = None,
    device: str | None = None,
    weights: str | None = None,
    report: Callable[[str], None] = _note,
    out: str | Path | None = None,
) -> CalibrationRun:
    """Score the normal (and anomalous) images with `checkpoint`, calibrate each class and
    store the calibrations beside the checkpoint, or in `out` (a file; `predict
    --calibration` reads it). Classes calibrated earlier for the same checkpoint into the
    same file are kept unless calibrated again (one class at a time works)."""
    t0 = time.perf_counter()
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"--fpr must be in (0, 1), got {fpr}")
    if class_name is not None and description is not None:
        raise ValueError("give --class-name or --description, not both")
    classes: dict[str, _Class] = {}
    kw = dict(class_name=class_name, description=description, report=report)
    for key, items in gather(normal, label=0, **kw).items():
        text = (key, None) if description is None else (None, description)
        classes[key] = _Class(key, *text, normals=[p for p, _ in items])
    if anomalous is not None:
        if Path(anomalous) == Path(normal):  # one records file for both: noted once
            kw["report"] = lambda message: None
        for key, items in gather(anomalous, label=1, **kw).items():
            if key not in classes:
                report(f"{anomalous}: class {key!r} has no normal images; its anomalies unused")
                continue
            classes[key].anomalies = items
    det = Detector.from_checkpoint(
        checkpoint, device=device, weights=weights, calibration=False, report=report
    )
    size = det.image_size
    calibrations: dict[str, Calibration] = {}
    n_images = 0
    targets = {k: det.target(c.class_name, c.description, domain) for k, c in classes.items()}
    for c in classes.values():  # every class is checked (few-shot: has normals) first
        target = targets[c.key]
        scores, maps = [], []
        for path in c.normals:
            s, m = det.raw(data.load_image(path), target)
            scores.append(s)
            maps.append(m.numpy())
        a_scores, a_maps, a_masks = [], [], []
        for path, mask in c.anomalies:
            s, m = det.raw(data.load_image(path), target)
            a_scores.append(s)
            if mask is not None:
                a_maps.append(m.numpy())
                a_masks.append(data.load_mask(mask, size)[0].numpy() > 0.5)
        n_images += len(c.normals) + len(c.anomalies)
        need = math.ceil(round(1.0 / fpr, 9))
        if len(scores) < need:
            report(
                f"class {c.key!r}: {len(scores)} normal images are too few to set a threshold "
                f"at FPR {fpr:g} (needs at least {need}); its image threshold is the highest "
                "normal score"
            )
        calibrations[c.key] = calibrate(
            np.asarray(scores),
            np.stack(maps),
            fpr=fpr,
            class_name=c.key,
            anomalous_scores=np.asarray(a_scores) if a_scores else None,
            anomalous_maps=np.stack(a_maps) if a_maps else None,
            anomalous_masks=np.stack(a_masks) if a_masks else None,
            extra={
                "class_name": target.class_name,
                "description": target.description,
                "domain": target.domain,
                "dataset": target.dataset,
                "method": det.method.name,
                "image_size": size,
                "image_score": f"{det.method.name} score rule per image (Method.score_rule)",
                "mode": target.mode,
                "normal_source": str(normal),
                "anomalous_source": str(anomalous) if anomalous is not None else None,
            },
        )
    stored = _earlier(checkpoint, report, out)
    kept = [k for k in stored if k not in calibrations]
    if kept:
        report(
            f"kept the earlier calibration of class{'es' * (len(kept) > 1)} {', '.join(kept)} "
            f"(remove {out or calibration_path(checkpoint)} to start over)"
        )
    path = save_calibration(checkpoint, {**stored, **calibrations}, fpr, out)
    modes = sorted({t.mode for t in targets.values()})
    return CalibrationRun(
        path,
        calibrations,
        Path(checkpoint),
        fpr,
        n_images,
        time.perf_counter() - t0,
        str(det.device),
        ", ".join(modes),
    )


def _earlier(
    checkpoint: str | Path, report: Callable[[str], None], out: str | Path | None = None
) -> dict[str, Calibration]:
    """The classes already calibrated for this checkpoint (kept unless calibrated again); a
    file of another checkpoint is replaced, with a note."""
    try:
        if out is not None and not Path(out).is_file():
            return {}
        return load_calibration(checkpoint, out) or {}
    except CalibrationMismatchError as err:
        report(f"replacing {str(err).split(';')[0]}")
        return {}


def _rate(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def summary_lines(run: CalibrationRun) -> list[str]:
    """What `aaclip calibrate` prints: one row per class, then where it was stored."""
    cals = run.calibrations
    tpr = any(c.n_anomalous_images for c in cals.values())
    width = max(5, *(len(k) for k in cals))
    head = (
        f"{'class':<{width}}  normals  image threshold  pixel threshold  image FPR  pixel FPR"
        + ("  anomalous  image TPR  pixel TPR" if tpr else "")
    )
    lines = [
        f"calibrated {run.checkpoint.name} at FPR {run.fpr:g} on {run.mode} raw scores "
        f"({run.n_images} images in {run.seconds:.1f} s on {run.device}):",
        head,
    ]
    for key, c in cals.items():
        row = (
            f"{key:<{width}}  {c.n_normal_images:>7}  {c.image_threshold:>15.6g}  "
            f"{c.pixel_threshold:>15.6g}  {c.image_fpr:>9.3f}  {c.pixel_fpr:>9.3f}"
        )
        if tpr:
            row += f"  {c.n_anomalous_images:>9}  {_rate(c.image_tpr):>9}  {_rate(c.pixel_tpr):>9}"
        lines.append(row)
    lines.append(f"stored {run.path}")
    return lines
