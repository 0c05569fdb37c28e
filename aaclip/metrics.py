"""Threshold-free anomaly-detection metrics: AUROC, AP, F1-max and AUPRO.

All values are fractions in [0, 1]; ``nan`` means "undefined" (one class only, no
ground-truth region, ...), never 0.

Exactness
    ``auroc`` / ``average_precision`` equal scikit-learn's ``roc_auc_score`` /
    ``average_precision_score`` (ties included: AUROC is the trapezoid rule over the tied
    ROC, AP the step-wise sum over distinct thresholds). ``f1_max`` is the maximum of
    2PR/(P+R) over every distinct threshold, predicting "anomalous" when ``score >= t``.
    ``aupro`` is the exact MVTec AUPRO: regions are the 8-connected components of each
    image's mask; at every distinct threshold FPR is the fraction of normal pixels (of all
    images) with ``score >= t`` and PRO the unweighted mean over all regions of the fraction
    of the region's pixels with ``score >= t``; the curve, starting at (0, 0), is integrated
    with the trapezoid rule up to FPR = ``fpr_limit`` (the point at the limit is linearly
    interpolated) and divided by ``fpr_limit``.

Algorithm (one sort per pixel)
    Scores are split into negatives (normal pixels) and positives. Negatives are sorted once
    with ``np.sort`` (SIMD, in place, no index array); positives are sorted once, descending,
    and cut into runs of equal score. Between two consecutive distinct *positive* scores the
    ROC/PRO curves are horizontal, so all four metrics only need, at each distinct positive
    score ``t``: the number of positives ``>= t`` (a run end), the number of negatives
    ``>= t`` and ``> t`` (two ``searchsorted`` in the sorted negatives), and, for AUPRO, the
    cumulative region weight ``1 / (|region| * n_regions)`` of the positives ``>= t`` (a
    cumulative sum). Positives are sorted together with their region id by packing
    (monotone float32 bits, region id) into one uint64 key, so no int64 argsort of the full
    array is ever made. ``aupro`` alone additionally uses ``np.partition`` to keep only the
    normal pixels above the score where the FPR passes ``fpr_limit`` (exact: the rest of the
    curve lies beyond the limit).

Memory (numpy backend, n pixels of which p anomalous, float32 maps)
    Besides the caller's maps (4n bytes) and masks (n bytes), the peak is about
    ``n`` (boolean masks / their complement) + ``4 (n - p)`` (the sorted copy of the normal
    scores) + about ``60 p`` bytes (positives, region ids, sort keys, weights, run arrays).
    For the whole of MVTec AD at 518x518 (n = 463M, p = 1.6%) the measured peak RSS is
    4.5 GiB, of which 2.2 GiB are the inputs (benchmarks/bench_metrics.py); no int64 array
    of length n is ever made. Pass float32 maps: float64 maps are kept as float64 (casting
    would change the ties) and double the score terms.

Backends
    numpy on the CPU by default; torch (sort, searchsorted, cumsum on the tensor's device)
    when the inputs are CUDA tensors or ``device="cuda"`` is asked for and available, or
    when ``backend="torch"`` is forced. The sorting and counting code is written once
    against a small backend shim; the final formulas run in numpy on the per-threshold
    arrays. Connected components are always labelled on the CPU with scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "CurveStats",
    "aupro",
    "auroc",
    "average_precision",
    "binary_curve_stats",
    "f1_max",
    "image_metrics",
    "label_regions",
    "pixel_metrics",
]

NAN = float("nan")
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_CHUNK = 1 << 22


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CurveStats:
    """Counts at every distinct positive score, in descending score order.

    Between two consecutive entries the ROC / PR / PRO curves are flat in the "positive"
    direction, so these arrays determine every curve exactly.

    Attributes:
        thresholds: distinct scores of the positives, descending.
        tps: number of positives with ``score >= t`` (int64).
        fps: number of negatives with ``score >= t`` (int64).
        fps_strict: number of negatives with ``score > t`` (int64).
        n_pos: number of positives. n_neg: number of negatives.
        pro: mean over regions of the fraction of the region with ``score >= t`` (float64),
            only when region ids were given.
        n_regions: number of ground-truth regions (0 when not computed).
        neg_covered: how many of the top negatives the counts account for (``n_neg`` unless
            the curve was truncated at an FPR limit).
        truncated: only the part of the curve up to an FPR limit was computed (AUPRO only).
    """

    thresholds: np.ndarray
    tps: np.ndarray
    fps: np.ndarray
    fps_strict: np.ndarray
    n_pos: int
    n_neg: int
    pro: np.ndarray | None = None
    n_regions: int = 0
    neg_covered: int = -1
    truncated: bool = False

    def _require_full(self) -> None:
        if self.truncated:
            raise ValueError("FPR-truncated CurveStats only support aupro()")

    def auroc(self) -> float:
        """Area under the ROC curve (Mann-Whitney form of sklearn's tied trapezoid)."""
        self._require_full()
        if self.n_pos == 0 or self.n_neg == 0:
            return NAN
        counts = np.diff(self.tps, prepend=0).astype(np.float64)
        below = (self.n_neg - self.fps).astype(np.float64)  # negatives < t
        tied = (self.fps - self.fps_strict).astype(np.float64)  # negatives == t
        num = float(np.dot(counts, 2.0 * below + tied))
        return num / (2.0 * self.n_pos * self.n_neg)

    def average_precision(self) -> float:
        """Step-wise AP: sum over thresholds of (recall increase) x precision."""
        self._require_full()
        if self.n_pos == 0 or self.n_neg == 0:
            return NAN
        counts = np.diff(self.tps, prepend=0).astype(np.float64)
        precision = self.tps / (self.tps + self.fps).astype(np.float64)
        return float(np.dot(counts, precision) / self.n_pos)

    def f1_max(self) -> float:
        """Best F1 = 2TP / (TP + FP + P) over all distinct thresholds."""
        self._require_full()
        if self.n_pos == 0 or self.n_neg == 0:
            return NAN
        f1 = 2.0 * self.tps / (self.tps + self.fps + self.n_pos).astype(np.float64)
        return float(f1.max())

    def aupro(self, fpr_limit: float = 0.3) -> float:
        """Normalised area under the PRO-vs-FPR curve up to ``fpr_limit``."""
        if self.pro is None:
            raise ValueError("these CurveStats carry no region information")
        if self.n_regions == 0 or self.n_neg == 0:
            return NAN
        limit = fpr_limit * self.n_neg  # work in units of negative counts
        covered = self.n_neg if self.neg_covered < 0 else self.neg_covered
        if covered < limit:
            raise ValueError("curve truncated below the FPR limit")  # internal guard
        k = len(self.thresholds)
        # Vertices: (0,0), then per threshold (fps_strict, previous pro), (fps, pro),
        # then (covered, last pro). Horizontal runs between them are exact.
        x = np.empty(2 * k + 2, dtype=np.float64)
        y = np.zeros(2 * k + 2, dtype=np.float64)
        x[0] = 0.0
        x[1:-1:2] = self.fps_strict
        x[2:-1:2] = self.fps
        x[-1] = covered
        if k:
            y[2:-1:2] = self.pro
            y[3:-1:2] = self.pro[:-1]
            y[-1] = self.pro[-1]
        return _area_up_to(x, y, limit) / limit


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under the polyline (x, y) for x in [0, limit]; x non-decreasing."""
    i = int(np.searchsorted(x, limit, side="right"))  # x[:i] <= limit, i >= 1
    xs, ys = x[:i], y[:i]
    area = float(np.dot(np.diff(xs), (ys[1:] + ys[:-1]) * 0.5))
    if xs[-1] < limit:  # interpolate the point at exactly x = limit
        x0, y0, x1, y1 = x[i - 1], y[i - 1], x[i], y[i]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += (limit - x0) * (y0 + y_lim) * 0.5
    return area


# --------------------------------------------------------------------------- backends


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


class _NumpyOps:
    """numpy implementation of the few primitives the core needs."""

    def asarray(self, x: Any) -> np.ndarray:
        if _is_tensor(x):
            x = x.detach().cpu().numpy()
        return np.asarray(x)

    def scores(self, x: np.ndarray) -> np.ndarray:
        if x.dtype.kind == "f":
            return x if x.dtype.itemsize >= 4 else x.astype(np.float32)
        if x.dtype.kind in "biu":
            return x.astype(np.float64)
        raise TypeError(f"scores must be real numbers, got dtype {x.dtype}")

    def labels(self, x: np.ndarray) -> np.ndarray:
        if x.dtype == np.bool_:
            return x
        if x.dtype.kind == "f":
            nonbinary = int(np.count_nonzero((x != 0) & (x != 1)))
            if nonbinary:
                raise ValueError(
                    f"float labels/masks must be 0/1; {nonbinary} other value(s) found "
                    "(threshold soft masks first)"
                )
        elif x.dtype.kind not in "iu":
            raise TypeError(f"labels must be bool or integer, got dtype {x.dtype}")
        return x > 0

    def count_nonfinite(self, x: np.ndarray) -> int:
        flat = x.reshape(-1)
        bad = 0
        for i in range(0, flat.size, _CHUNK):
            part = flat[i : i + _CHUNK]
            bad += part.size - int(np.count_nonzero(np.isfinite(part)))
        return bad

    def flat(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(-1)

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return x

    def count(self, mask: np.ndarray) -> int:
        return int(np.count_nonzero(mask))

    def select(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return x[mask]

    def sort_asc(self, x: np.ndarray) -> np.ndarray:
        x.sort()  # x is always a private copy here: sort in place
        return x

    def sort_desc(self, x: np.ndarray) -> np.ndarray:
        x.sort()
        return x[::-1]

    def top_k_with_ties(self, x: np.ndarray, k: int) -> tuple[np.ndarray, Any]:
        """All values >= the k-th largest (``cut``), unsorted, and ``cut``."""
        split = x.size - k
        x.partition(split)  # private copy: partition in place, no index array
        cut = x[split]
        ties = 0  # values equal to cut that landed below the split
        for i in range(0, split, _CHUNK):
            ties += int(np.count_nonzero(x[i : min(i + _CHUNK, split)] == cut))
        top = x[split:]
        if ties:
            top = np.concatenate([top, np.full(ties, cut, dtype=x.dtype)])
        return top, cut

    def sort_desc_weighted(
        self, x: np.ndarray, rid: np.ndarray, region_w: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores descending and the region weight of each, without an int64 argsort."""
        if x.dtype != np.float32 or region_w.size >= 2**32:
            order = np.argsort(x)[::-1]
            return x[order], region_w[rid[order]]
        bits = (x + np.float32(0.0)).view(np.uint32)  # +0.0 folds -0.0 into 0.0
        sign = np.uint32(0x80000000)
        key = np.where(bits >= sign, ~bits, bits | sign)  # monotone in the float value
        packed = key.astype(np.uint64)
        del bits, key
        packed <<= np.uint64(32)
        packed |= rid.astype(np.uint64)
        packed.sort()
        packed = packed[::-1]
        key = (packed >> np.uint64(32)).astype(np.uint32)
        bits = np.where(key >= sign, key & np.uint32(0x7FFFFFFF), ~key)
        weights = region_w[(packed & np.uint64(0xFFFFFFFF)).astype(np.intp)]
        return bits.view(np.float32), weights

    def run_ends(self, v: np.ndarray) -> np.ndarray:
        ends = np.flatnonzero(v[1:] != v[:-1])
        return np.append(ends, v.size - 1).astype(np.int64)

    def searchsorted(self, a: np.ndarray, v: np.ndarray, right: bool) -> np.ndarray:
        return np.searchsorted(a, v, side="right" if right else "left").astype(np.int64)

    def cumsum64(self, w: np.ndarray) -> np.ndarray:
        return np.cumsum(w, dtype=np.float64)

    def from_numpy(self, x: np.ndarray) -> np.ndarray:
        return x


class _TorchOps:
    """torch implementation of the same primitives, on ``device``."""

    def __init__(self, device: Any) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)

    def asarray(self, x: Any) -> Any:
        return self.torch.as_tensor(x, device=self.device)

    def scores(self, x: Any) -> Any:
        if x.is_floating_point():
            return x if x.element_size() >= 4 else x.float()
        if x.is_complex():
            raise TypeError(f"scores must be real numbers, got dtype {x.dtype}")
        return x.double()

    def labels(self, x: Any) -> Any:
        torch = self.torch
        if x.dtype == torch.bool:
            return x
        if x.is_floating_point():
            nonbinary = int(((x != 0) & (x != 1)).sum())
            if nonbinary:
                raise ValueError(
                    f"float labels/masks must be 0/1; {nonbinary} other value(s) found "
                    "(threshold soft masks first)"
                )
        return x > 0

    def count_nonfinite(self, x: Any) -> int:
        return int((~self.torch.isfinite(x)).sum())

    def flat(self, x: Any) -> Any:
        return x.reshape(-1)

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.detach().cpu().numpy()

    def count(self, mask: Any) -> int:
        return int(mask.sum())

    def select(self, x: Any, mask: Any) -> Any:
        return x[mask]

    def sort_asc(self, x: Any) -> Any:
        return self.torch.sort(x).values

    def sort_desc(self, x: Any) -> Any:
        return self.torch.sort(x, descending=True).values

    def top_k_with_ties(self, x: Any, k: int) -> tuple[Any, Any]:
        cut = self.torch.kthvalue(x, x.numel() - k + 1).values
        return x[x >= cut], cut

    def sort_desc_weighted(self, x: Any, rid: Any, region_w: Any) -> tuple[Any, Any]:
        order = self.torch.argsort(x, descending=True)
        return x[order], region_w[rid[order]]

    def run_ends(self, v: Any) -> Any:
        torch = self.torch
        ends = torch.nonzero(v[1:] != v[:-1]).reshape(-1)
        last = torch.tensor([v.numel() - 1], device=v.device, dtype=ends.dtype)
        return torch.cat([ends, last]).long()

    def searchsorted(self, a: Any, v: Any, right: bool) -> Any:
        return self.torch.searchsorted(a, v.contiguous(), right=right).long()

    def cumsum64(self, w: Any) -> Any:
        return self.torch.cumsum(w, 0, dtype=self.torch.float64)

    def from_numpy(self, x: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(x)).to(self.device)


def _backend(inputs: tuple[Any, ...], device: Any, backend: str) -> _NumpyOps | _TorchOps:
    if backend not in ("auto", "numpy", "torch"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'torch', got {backend!r}")
    if backend == "numpy":
        return _NumpyOps()
    tensors = [x for x in inputs if _is_tensor(x)]
    if backend == "torch":
        if device is None:
            device = tensors[0].device if tensors else "cpu"
        return _TorchOps(device)
    if device is not None:
        if str(device).startswith("cuda"):
            import torch

            if torch.cuda.is_available():
                return _TorchOps(device)
        return _NumpyOps()
    for x in tensors:
        if x.device.type == "cuda":
            return _TorchOps(x.device)
    return _NumpyOps()


# --------------------------------------------------------------------------- core


def _prefix(name: str | None) -> str:
    return f"{name}: " if name else ""


def _prepare(
    ops: _NumpyOps | _TorchOps,
    scores: Any,
    labels: Any,
    name: str | None,
    what: tuple[str, str],
) -> tuple[Any, Any]:
    """Backend arrays (scores as float, labels as bool), checked for shape and finiteness."""
    s = ops.scores(ops.asarray(scores))
    lab = ops.asarray(labels)
    if tuple(s.shape) != tuple(lab.shape):
        raise ValueError(
            f"{_prefix(name)}{what[1]} shape {tuple(lab.shape)} does not match "
            f"{what[0]} shape {tuple(s.shape)}"
        )
    bad = ops.count_nonfinite(s)
    if bad:
        raise ValueError(
            f"{_prefix(name)}{what[0]} contain {bad} non-finite value(s) (NaN or inf) "
            f"out of {math.prod(s.shape)}"
        )
    return s, ops.labels(lab)


def _curve_stats(
    ops: _NumpyOps | _TorchOps,
    scores: Any,
    labels: Any,
    rid: np.ndarray | None = None,
    region_sizes: np.ndarray | None = None,
    fpr_limit: float | None = None,
) -> CurveStats:
    """Single-sort counts (see module docstring) from flat backend arrays."""
    n_pos = ops.count(labels)
    n_neg = int(math.prod(scores.shape)) - n_pos
    n_regions = 0 if region_sizes is None else int(region_sizes.size)
    empty_i = np.zeros(0, dtype=np.int64)
    if n_pos == 0 or n_neg == 0:
        empty_pro = None if rid is None else np.zeros(0)
        return CurveStats(
            np.zeros(0), empty_i, empty_i, empty_i, n_pos, n_neg, empty_pro, n_regions
        )
    neg = ops.select(scores, ~labels)
    pos = ops.select(scores, labels)
    region_w = None
    if rid is not None:
        region_w = ops.from_numpy(1.0 / (region_sizes.astype(np.float64) * n_regions))
        rid = ops.from_numpy(rid)
    if fpr_limit is not None:
        # Only the normal pixels above the score at which FPR passes the limit matter.
        k = min(n_neg, math.ceil(fpr_limit * n_neg) + 1)
        neg, cut = ops.top_k_with_ties(neg, k)
        keep = pos >= cut
        pos = ops.select(pos, keep)
        if rid is not None:
            rid = ops.select(rid, keep)
    neg = ops.sort_asc(neg)
    covered = int(neg.shape[0])
    pro = None
    if int(pos.shape[0]) == 0:
        thr = tps = fps = fps_strict = ops.from_numpy(empty_i)
        if rid is not None:
            pro = np.zeros(0)
    else:
        cum_w = None
        if rid is None:
            vals = ops.sort_desc(pos)
        else:
            vals, weights = ops.sort_desc_weighted(pos, rid, region_w)
            cum_w = ops.cumsum64(weights)
            del weights
        del pos
        ends = ops.run_ends(vals)
        thr = vals[ends]
        del vals
        tps = ends + 1
        if cum_w is not None:
            pro = ops.to_numpy(cum_w[ends])
            del cum_w
        fps = covered - ops.searchsorted(neg, thr, right=False)
        fps_strict = covered - ops.searchsorted(neg, thr, right=True)
    return CurveStats(
        thresholds=ops.to_numpy(thr),
        tps=ops.to_numpy(tps),
        fps=ops.to_numpy(fps),
        fps_strict=ops.to_numpy(fps_strict),
        n_pos=n_pos,
        n_neg=n_neg,
        pro=pro,
        n_regions=n_regions,
        neg_covered=covered,
        truncated=fpr_limit is not None,
    )


def label_regions(masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """8-connected ground-truth regions, labelled per image.

    Args:
        masks: (N, H, W) boolean masks (numpy).

    Returns:
        ``(rid, sizes)``: the region index (0..R-1, int64) of every anomalous pixel in
        C order of ``masks``, and the pixel count of each region.
    """
    masks = np.asarray(masks, dtype=bool)
    ids: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    sizes: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    offset = 0
    for i in np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1)):
        lab, n = ndimage.label(masks[i], structure=_EIGHT_CONNECTED)
        ids.append(lab[masks[i]].astype(np.int64) + (offset - 1))
        sizes.append(np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(np.int64))
        offset += n
    return np.concatenate(ids), np.concatenate(sizes)


def _check_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")


def _pixel_inputs(
    ops: _NumpyOps | _TorchOps, maps: Any, masks: Any, name: str | None
) -> tuple[Any, Any, np.ndarray]:
    s, lab = _prepare(ops, maps, masks, name, ("maps", "masks"))
    if s.ndim != 3:
        raise ValueError(f"{_prefix(name)}maps must be (N, H, W), got shape {tuple(s.shape)}")
    lab_np = lab if isinstance(lab, np.ndarray) else lab.cpu().numpy()
    return s, lab, lab_np


# --------------------------------------------------------------------------- public API


def binary_curve_stats(
    scores: Any,
    labels: Any,
    *,
    name: str | None = None,
    device: Any = None,
    backend: str = "auto",
) -> CurveStats:
    """One-sort counts from which AUROC, AP and F1-max follow (any shape, flattened).

    Args:
        scores: real scores (numpy array, torch tensor or array-like); higher = anomalous.
        labels: same shape; bool, int (``> 0`` is positive) or 0/1 floats.
        name: prefix for error messages.
        device: e.g. ``"cuda"`` to compute with torch on the GPU when available.
        backend: ``"auto"``, ``"numpy"`` or ``"torch"``.
    """
    ops = _backend((scores, labels), device, backend)
    s, lab = _prepare(ops, scores, labels, name, ("scores", "labels"))
    return _curve_stats(ops, ops.flat(s), ops.flat(lab))


def auroc(
    scores: Any, labels: Any, *, name: str | None = None, device: Any = None, backend: str = "auto"
) -> float:
    """Area under the ROC curve (= sklearn ``roc_auc_score``); nan with one class only."""
    return binary_curve_stats(scores, labels, name=name, device=device, backend=backend).auroc()


def average_precision(
    scores: Any, labels: Any, *, name: str | None = None, device: Any = None, backend: str = "auto"
) -> float:
    """Average precision (= sklearn ``average_precision_score``); nan with one class only."""
    return binary_curve_stats(
        scores, labels, name=name, device=device, backend=backend
    ).average_precision()


def f1_max(
    scores: Any, labels: Any, *, name: str | None = None, device: Any = None, backend: str = "auto"
) -> float:
    """Maximum F1 over all distinct thresholds (``score >= t``); nan with one class only."""
    return binary_curve_stats(scores, labels, name=name, device=device, backend=backend).f1_max()


def image_metrics(
    scores: Any, labels: Any, *, name: str | None = None, device: Any = None, backend: str = "auto"
) -> dict[str, float]:
    """``image_auroc``, ``image_ap``, ``image_f1_max`` of (N,) scores and labels."""
    stats = binary_curve_stats(scores, labels, name=name, device=device, backend=backend)
    return {
        "image_auroc": stats.auroc(),
        "image_ap": stats.average_precision(),
        "image_f1_max": stats.f1_max(),
    }


def aupro(
    maps: Any,
    masks: Any,
    fpr_limit: float = 0.3,
    *,
    name: str | None = None,
    device: Any = None,
    backend: str = "auto",
) -> float:
    """Exact MVTec AUPRO of (N, H, W) anomaly maps against (N, H, W) masks.

    Returns nan when there is no ground-truth region or no normal pixel. Only the normal
    pixels above the ``fpr_limit`` quantile are sorted (exact, see module docstring).
    """
    _check_limit(fpr_limit)
    ops = _backend((maps, masks), device, backend)
    s, lab, lab_np = _pixel_inputs(ops, maps, masks, name)
    rid, sizes = label_regions(lab_np)
    stats = _curve_stats(ops, ops.flat(s), ops.flat(lab), rid, sizes, fpr_limit=fpr_limit)
    return stats.aupro(fpr_limit)


def pixel_metrics(
    maps: Any,
    masks: Any,
    aupro: bool = True,
    fpr_limit: float = 0.3,
    *,
    name: str | None = None,
    device: Any = None,
    backend: str = "auto",
) -> dict[str, float]:
    """``pixel_auroc``, ``pixel_ap``, ``pixel_f1_max`` (and ``pixel_aupro``) from one sort.

    Args:
        maps: (N, H, W) float anomaly maps (float32 recommended), numpy or torch.
        masks: (N, H, W) ground-truth masks, bool or int (``> 0`` is anomalous).
        aupro: also compute AUPRO (connected components on the CPU).
        fpr_limit: FPR integration limit of AUPRO.
    """
    _check_limit(fpr_limit)
    ops = _backend((maps, masks), device, backend)
    s, lab, lab_np = _pixel_inputs(ops, maps, masks, name)
    rid = sizes = None
    if aupro:
        rid, sizes = label_regions(lab_np)
    stats = _curve_stats(ops, ops.flat(s), ops.flat(lab), rid, sizes)
    out = {
        "pixel_auroc": stats.auroc(),
        "pixel_ap": stats.average_precision(),
        "pixel_f1_max": stats.f1_max(),
    }
    if aupro:
        out["pixel_aupro"] = stats.aupro(fpr_limit)
    return out
