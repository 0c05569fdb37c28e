"""The metric protocol (notebook 06): the exact PRO curve, and two WRONG AUPRO variants kept
only as labelled references, an adversarial case where they disagree, and a single-label
class whose image metrics are missing, never 0."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from aaclip import metrics


def _as_numpy(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    maps = maps.numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    masks = masks.numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    return maps.astype(np.float64), masks.astype(bool)


def _region_weight_tail(maps: np.ndarray, masks: np.ndarray):
    """Sorted anomalous scores and the suffix sums of their region weights 1/(|r|·R)."""
    rid, sizes = metrics.label_regions(masks)
    pos = maps[masks]  # C order, the order label_regions uses
    weights = 1.0 / (sizes[rid] * len(sizes))
    order = np.argsort(pos, kind="stable")
    pos, weights = pos[order], weights[order]
    tail = np.r_[np.cumsum(weights[::-1])[::-1], 0.0]  # tail[i] = sum of weights[i:]
    return pos, tail


def pro_curve(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference PRO curve at every distinct score (predict anomalous when score >= t).

    Returns (thresholds descending, FPR, PRO), starting with (inf, 0, 0). Slow and simple;
    for plots and the reference variants below, not for evaluation (use `metrics.aupro`).
    """
    maps, masks = _as_numpy(maps, masks)
    neg = np.sort(maps[~masks])
    pos, tail = _region_weight_tail(maps, masks)
    thresholds = np.unique(maps)[::-1]
    fpr = (len(neg) - np.searchsorted(neg, thresholds, side="left")) / len(neg)
    pro = tail[np.searchsorted(pos, thresholds, side="left")]
    return np.r_[np.inf, thresholds], np.r_[0.0, fpr], np.r_[0.0, pro]


def aupro_wrong_last_fpr(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """WRONG AUPRO, kept as a reference only (anomalib before 2.3).

    Keeps the curve points with FPR <= limit, integrates them (trapezoid) and divides by
    the last FPR reached instead of interpolating to the limit and dividing by the limit.
    """
    _, fpr, pro = pro_curve(maps, masks)
    keep = fpr <= fpr_limit
    x, y = fpr[keep], pro[keep]
    return float(np.trapezoid(y, x) / x[-1]) if x[-1] > 0 else float("nan")


def aupro_wrong_200_thresholds(
    maps: Any, masks: Any, fpr_limit: float = 0.3, steps: int = 200
) -> float:
    """WRONG AUPRO, kept as a reference only (cflow-ad / AnomalyCLIP `cal_pro_score` style).

    `steps` thresholds evenly spaced from min to max score (predict anomalous when
    score > t); points with FPR < limit are kept and their FPR axis is min-max rescaled to
    [0, 1] before integrating: the result depends on where the grid happens to fall.
    """
    maps, masks = _as_numpy(maps, masks)
    neg = np.sort(maps[~masks])
    pos, tail = _region_weight_tail(maps, masks)
    lo, hi = float(maps.min()), float(maps.max())
    thresholds = lo + (hi - lo) / steps * np.arange(steps)
    fpr = (len(neg) - np.searchsorted(neg, thresholds, side="right")) / len(neg)
    pro = tail[np.searchsorted(pos, thresholds, side="right")]
    keep = fpr < fpr_limit
    if keep.sum() < 2:
        return float("nan")
    x, y = fpr[keep], pro[keep]
    if x.max() == x.min():
        return float("nan")
    x = (x - x.min()) / (x.max() - x.min())
    order = np.argsort(x, kind="stable")
    return float(np.trapezoid(y[order], x[order]))


def aupro_variants(maps: Any, masks: Any, fpr_limit: float = 0.3) -> dict[str, float]:
    """The exact AUPRO (`metrics.aupro`) beside the two wrong reference variants."""
    return {
        "pixel_aupro": float(metrics.aupro(maps, masks, fpr_limit=fpr_limit)),
        "pixel_aupro_wrong_last_fpr": aupro_wrong_last_fpr(maps, masks, fpr_limit),
        "pixel_aupro_wrong_200_thresholds": aupro_wrong_200_thresholds(maps, masks, fpr_limit),
    }


def adversarial_aupro_case(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Two images whose PRO curve jumps across FPR = 0.3, where the variants disagree.

    One small region is found first at high scores spread over (0.8, 1.0); a large region
    only scores 0.5, tied with most of the normal pixels; 5% of normal pixels score in
    (0.6, 0.8). The exact curve interpolates across the jump from FPR ~0.05 to ~0.7, the
    last-FPR variant stops at FPR ~0.05, the 200-threshold variant rescales that stretch.
    """
    rng = np.random.default_rng(0)
    masks = np.zeros((2, size, size), bool)
    masks[0, 4:10, 4:10] = True  # small region
    masks[1, 16:48, 16:48] = True  # large region
    maps = np.zeros((2, size, size))
    normal = np.flatnonzero(~masks.ravel())
    rng.shuffle(normal)
    n_top, n_tied = int(0.05 * len(normal)), int(0.65 * len(normal))
    flat = maps.reshape(-1)
    flat[normal[:n_top]] = rng.uniform(0.6, 0.8, n_top)
    flat[normal[n_top : n_top + n_tied]] = 0.5
    flat[normal[n_top + n_tied :]] = rng.uniform(0.0, 0.3, len(normal) - n_top - n_tied)
    maps[0][masks[0]] = rng.uniform(0.8, 1.0, masks[0].sum())
    maps[1][masks[1]] = 0.5
    return maps.astype(np.float32), masks


def only_anomalous(pred: Any) -> Any:
    """The same class restricted to its anomalous images: a single-label class (like the
    colon sets), for which image metrics are undefined."""
    keep = np.flatnonzero(np.asarray(pred.labels) == 1)
    return dataclasses.replace(
        pred,
        class_name=f"{pred.class_name} (anomalous only)",
        maps=pred.maps[keep],
        scores=pred.scores[keep],
        labels=np.asarray(pred.labels)[keep],
        masks=pred.masks[keep],
        image_paths=[pred.image_paths[i] for i in keep],
    )
