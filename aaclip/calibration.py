"""Calibrated scores for one class: thresholds at a target false-positive rate, from normals.

A model's raw image scores and anomaly maps have no absolute meaning; min-max normalising
them over the images of one call makes an image's score depend on its neighbours. A
`Calibration` is computed once from NORMAL images of one class (anomalous ones, when
given, only add the achieved true-positive rates) and then applied to each image alone:

- image threshold: the raw score above which an image is called anomalous, chosen so that
  at most `fpr` of the normal images are (exactly `fpr` when `fpr * n` is a whole number
  and the scores have no ties);
- pixel threshold: the same on all pixels of the normal images' maps;
- normalisation: `normalise(raw) = 0.5 + 0.5 * z / (1 + |z|)` with `z = (raw - threshold) /
  scale` (an algebraic sigmoid): the threshold maps to exactly 0.5, so "anomalous" is
  "normalised score > 0.5" (anomalib's convention); strictly increasing; strictly inside
  (0, 1), never clipped, so ordinary images keep distinct scores instead of piling up at 0
  and 1 (the clipped linear map of format 1 sent 9 of 10 calibrated images to exactly 0 or
  1).

The scale is the spread of the normal calibration values, `threshold - median`: the median
normal maps to 0.25, the threshold to 0.5, a score one spread above the threshold to 0.75,
three spreads above to 0.875 (ten: 0.955). A median and the threshold quantile are stable
where max - min of a few normals (anomalib's divisor) moves with one odd image. When the
spread is zero (constant normals), the threshold's distance to the smallest normal is used,
then a tiny positive scale (a step at the threshold).

The core is pure numpy (no model, no files); `to_dict`/`from_dict` give the JSON form.
`save_calibration`/`load_calibration` store the calibrations of a checkpoint beside it, as
`<checkpoint file>.calibration.json`, tied to the checkpoint by the SHA-256 of its bytes: a
calibration of another checkpoint (retrained, overwritten) is refused, never applied.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

__all__ = [
    "SUFFIX",
    "VERSION",
    "Calibration",
    "CalibrationMismatchError",
    "calibrate",
    "calibration_path",
    "calibrations_from_dict",
    "calibrations_to_dict",
    "load_calibration",
    "normalise",
    "save_calibration",
    "threshold_at_fpr",
]

VERSION = 2  # 2: the algebraic sigmoid on the method's per-image score rule (1: clipped)
SUFFIX = ".calibration.json"  # appended to the checkpoint's file name


def normalise(raw, threshold: float, scale: float):
    """`0.5 + 0.5 * z / (1 + |z|)`, `z = (raw - threshold) / scale`: strictly increasing,
    `threshold` -> exactly 0.5, `threshold -/+ scale` -> 0.25/0.75, inside (0, 1).

    Element-wise (a scalar gives a float, an array an array of float64): each value's
    normalised score depends on that value alone.
    """
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    z = (np.asarray(raw, dtype=np.float64) - threshold) / scale
    out = 0.5 + 0.5 * z / (1.0 + np.abs(z))
    return float(out) if out.ndim == 0 else out


def _values(x, name: str, dtype=np.float64) -> np.ndarray:
    """All values of an array or of a sequence of arrays (maps may differ in size), flat.

    A float32 array stays float32 (no float64 copy of millions of pixels).
    """
    if isinstance(x, np.ndarray):
        keep = x.dtype == np.float32 and dtype == np.float64
        flat = np.asarray(x, dtype=None if keep else dtype).ravel()
    else:
        parts = [np.asarray(a, dtype=dtype).ravel() for a in x]
        flat = np.concatenate(parts) if parts else np.empty(0, dtype)
    if flat.size == 0:
        raise ValueError(f"{name}: no values")
    if not np.isfinite(flat).all():
        raise ValueError(f"{name}: {int((~np.isfinite(flat)).sum())} values are NaN or infinite")
    return flat


def _check_fpr(fpr: float) -> float:
    if not (0.0 < float(fpr) < 1.0):
        raise ValueError(f"fpr must be in (0, 1), got {fpr!r}")
    return float(fpr)


def _allowed_false_positives(n: int, fpr: float) -> int:
    # round first: 0.07 * 100 is 7.000000000000001 in floating point
    return min(n - 1, math.floor(round(fpr * n, 9)))


def threshold_at_fpr(normal, fpr: float) -> tuple[float, float]:
    """(threshold, achieved FPR): at most `floor(fpr * n)` normal values lie above it.

    The threshold is the (k+1)-th largest normal value, k = floor(fpr * n); a value is
    called anomalous when strictly above it. Without ties exactly k normals are above.
    """
    fpr = _check_fpr(fpr)
    x = _values(normal, "normal values")
    n = x.size
    k = _allowed_false_positives(n, fpr)
    threshold = float(np.partition(x, n - k - 1)[n - k - 1])
    return threshold, float(np.count_nonzero(x > threshold)) / n


def _robust_scale(x: np.ndarray, threshold: float) -> float:
    for spread in (threshold - float(np.median(x)), threshold - float(x.min())):
        if spread > 0:
            return spread
    return max(abs(threshold), 1.0) * 1e-6


@dataclass(frozen=True)
class Calibration:
    """Thresholds and normalisation of one class; see the module notes.

    `image_fpr`/`pixel_fpr` are the rates achieved on the calibration normals (at most
    `fpr`); `image_tpr`/`pixel_tpr` are set when anomalous images (and masks) were given.
    `extra` carries what the caller wants stored alongside (checkpoint hash, prompt ...).
    """

    class_name: str
    fpr: float
    image_threshold: float
    image_scale: float
    pixel_threshold: float
    pixel_scale: float
    n_normal_images: int
    n_normal_pixels: int
    image_fpr: float
    pixel_fpr: float
    n_anomalous_images: int = 0
    image_tpr: float | None = None
    pixel_tpr: float | None = None
    extra: dict = field(default_factory=dict)

    def normalise_score(self, raw):
        """Normalised image score(s) in [0, 1]; the image threshold is 0.5."""
        return normalise(raw, self.image_threshold, self.image_scale)

    def normalise_map(self, raw_map):
        """Normalised anomaly map in [0, 1]; the pixel threshold is 0.5."""
        return normalise(raw_map, self.pixel_threshold, self.pixel_scale)

    def label(self, raw):
        """True (anomalous) where the raw image score is above the image threshold."""
        out = np.asarray(raw, dtype=np.float64) > self.image_threshold
        return bool(out) if out.ndim == 0 else out

    def mask(self, raw_map) -> np.ndarray:
        """Binary defect mask: pixels whose raw value is above the pixel threshold."""
        return np.asarray(raw_map) > self.pixel_threshold

    def to_dict(self) -> dict:
        """JSON-ready form, with a format version."""
        return {"version": VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping) -> Calibration:
        """Inverse of `to_dict`; refuses a newer format or missing fields, ignores unknown ones."""
        version = d.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise ValueError(
                f"calibration format version {version!r} is not readable (<= {VERSION})"
            )
        if version < VERSION:
            raise ValueError(
                f"calibration format version {version} holds thresholds of the earlier score "
                f"rule and clipped normalisation; format {VERSION} is needed"
            )
        names = {f.name for f in fields(cls)}
        required = [
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        ]
        missing = [n for n in required if n not in d]
        if missing:
            raise ValueError(f"calibration: missing fields {missing}")
        return cls(**{k: v for k, v in d.items() if k in names})


def calibrate(
    normal_scores: Sequence[float] | np.ndarray,
    normal_maps: Sequence[np.ndarray] | np.ndarray,
    *,
    fpr: float = 0.01,
    class_name: str = "",
    anomalous_scores: Sequence[float] | np.ndarray | None = None,
    anomalous_maps: Iterable[np.ndarray] | np.ndarray | None = None,
    anomalous_masks: Iterable[np.ndarray] | np.ndarray | None = None,
    extra: Mapping | None = None,
) -> Calibration:
    """Calibrate one class from the raw scores and maps of its normal images.

    `normal_maps` (and `anomalous_maps`/`anomalous_masks`) are one map per image, all of
    one array (N, H, W) or a sequence of (H, W) arrays. Pixel values are handled in float32
    (the maps' precision) so that a few hundred 518 x 518 maps fit in memory.
    """
    fpr = _check_fpr(fpr)
    scores = _values(normal_scores, "normal image scores")
    pixels = _values(normal_maps, "normal maps", np.float32)
    n_maps = len(normal_maps)
    if n_maps != scores.size:
        raise ValueError(f"{scores.size} normal image scores but {n_maps} maps")
    image_threshold, image_fpr = threshold_at_fpr(scores, fpr)
    pixel_threshold, pixel_fpr = threshold_at_fpr(pixels, fpr)
    image_tpr = pixel_tpr = None
    n_anomalous = 0
    if anomalous_scores is not None:
        anomalous = _values(anomalous_scores, "anomalous image scores")
        n_anomalous = anomalous.size
        image_tpr = float(np.count_nonzero(anomalous > image_threshold)) / anomalous.size
    if anomalous_maps is not None and anomalous_masks is not None:
        maps = _values(anomalous_maps, "anomalous maps", np.float32)
        masks = _values(anomalous_masks, "anomalous masks", np.float32) > 0
        if maps.size != masks.size:
            raise ValueError(f"anomalous maps ({maps.size} pixels) and masks ({masks.size}) differ")
        if masks.any():
            pixel_tpr = float(np.count_nonzero(maps[masks] > pixel_threshold)) / int(masks.sum())
    return Calibration(
        class_name=class_name,
        fpr=fpr,
        image_threshold=image_threshold,
        image_scale=_robust_scale(scores, image_threshold),
        pixel_threshold=pixel_threshold,
        pixel_scale=_robust_scale(pixels, pixel_threshold),
        n_normal_images=int(scores.size),
        n_normal_pixels=int(pixels.size),
        image_fpr=image_fpr,
        pixel_fpr=pixel_fpr,
        n_anomalous_images=n_anomalous,
        image_tpr=image_tpr,
        pixel_tpr=pixel_tpr,
        extra=dict(extra or {}),
    )


def calibrations_to_dict(calibrations: Mapping[str, Calibration]) -> dict:
    """`{"version", "classes": {name: calibration}}`, the JSON stored with a checkpoint."""
    return {"version": VERSION, "classes": {k: c.to_dict() for k, c in calibrations.items()}}


def calibrations_from_dict(d: Mapping) -> dict[str, Calibration]:
    """Inverse of `calibrations_to_dict`."""
    if not isinstance(d.get("classes"), Mapping):
        raise ValueError("calibrations: no 'classes' mapping")
    return {k: Calibration.from_dict(v) for k, v in d["classes"].items()}


# --------------------------------------------------------------------------- storage


class CalibrationMismatchError(ValueError):
    """A stored calibration belongs to another checkpoint or cannot be read; one line."""


def calibration_path(checkpoint: str | os.PathLike) -> Path:
    """`<checkpoint file>.calibration.json`, beside the checkpoint."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + SUFFIX)


def _checkpoint_sha256(checkpoint: Path) -> str:
    from aaclip import digests

    return digests.cached_digest(checkpoint, "file-sha256", lambda: digests.file_sha256(checkpoint))


def save_calibration(
    checkpoint: str | os.PathLike,
    calibrations: Mapping[str, Calibration],
    fpr: float,
    path: str | os.PathLike | None = None,
) -> Path:
    """Write the calibrations of `checkpoint` beside it, or to `path` (a read-only
    checkpoint's folder), atomically; returns the file.

    The file holds `version`, `classes` (as `calibrations_to_dict`), `checkpoint` (its file
    name), `checkpoint_sha256` (of its bytes), `fpr`, `created` (ISO 8601, UTC) and
    `aaclip_version`. An existing calibration of the checkpoint is replaced.
    """
    from aaclip import __version__
    from aaclip.fileio import atomic_write_text

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    if not calibrations:
        raise ValueError("no calibration to store (no class had normal images)")
    doc = {
        **calibrations_to_dict(calibrations),
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": _checkpoint_sha256(checkpoint),
        "fpr": _check_fpr(fpr),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "aaclip_version": __version__,
    }
    path = Path(path) if path is not None else calibration_path(checkpoint)
    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return path


def load_calibration(
    checkpoint: str | os.PathLike, path: str | os.PathLike | None = None
) -> dict[str, Calibration] | None:
    """The calibrations stored beside `checkpoint` (or in `path`, which must exist), by
    class; None when there are none.

    Refuses (CalibrationMismatchError, one line) a file written for another checkpoint
    (different SHA-256 of the checkpoint's bytes) or one that cannot be read.
    """
    checkpoint = Path(checkpoint)
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such calibration file")
    path = Path(path) if path is not None else calibration_path(checkpoint)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        calibrations = calibrations_from_dict(doc)
    except (OSError, ValueError, TypeError) as err:
        raise CalibrationMismatchError(
            f"{path}: not a readable calibration ({' '.join(str(err).split())}); "
            f"run `aaclip calibrate --checkpoint {checkpoint} --normal ...` again"
        ) from None
    saved, actual = doc.get("checkpoint_sha256"), _checkpoint_sha256(checkpoint)
    if saved != actual:
        raise CalibrationMismatchError(
            f"{path}: calibrated for another checkpoint (sha256 {str(saved)[:12]}, "
            f"{checkpoint.name} is {actual[:12]}); run `aaclip calibrate --checkpoint "
            f"{checkpoint} --normal ...` again or remove the file"
        )
    return calibrations
