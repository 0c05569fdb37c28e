"""From patch features and text anchors to anomaly maps and image scores (shared by methods)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from aaclip.runtime import full_precision

LOGIT_SCALE = 100.0
BLUR = {"industrial": (7, 1.0), "medical": (9, 1.5)}  # kernel size, sigma


def patch_logits(features: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """100 * f.T for features (B, L, E), anchors (E, 2) or (B, E, 2) -> logits (B, 2, g, g)."""
    logits = LOGIT_SCALE * torch.matmul(features, anchors)
    b, n, c = logits.shape
    g = math.isqrt(n)
    return logits.permute(0, 2, 1).reshape(b, c, g, g)


def upsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize with align_corners=True, as the released code does."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)


def training_probs(features: torch.Tensor, anchors: torch.Tensor, size: int) -> torch.Tensor:
    """Per-pixel (normal, abnormal) probabilities for the segmentation loss: (B, 2, size, size)."""
    return upsample(patch_logits(features, anchors), size).softmax(dim=1)


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) with reflect padding."""
    half = kernel_size // 2
    coords = torch.arange(kernel_size, dtype=torch.float64, device=x.device) - half
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(x.dtype)
    x = F.pad(x, (half, half, half, half), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return F.conv2d(x, kernel.view(1, 1, -1, 1))


def anomaly_map(
    level_features: list[torch.Tensor], anchors: torch.Tensor, size: int, domain: str
) -> torch.Tensor:
    """Sum over levels of blur((S_abn + 1 - S_nrm) / 2) upsampled to `size`: (B, size, size)."""
    kernel, sigma = BLUR[domain]
    total = None
    for features in level_features:
        s = full_precision(patch_logits(features, anchors))
        m = ((s[:, 1] + 1 - s[:, 0]) / 2).unsqueeze(1)
        m = upsample(gaussian_blur(m, kernel, sigma), size)[:, 0]
        total = m if total is None else total + m
    return total


def image_probability(global_feature: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """p = (v . t_abnormal + 1) / 2 for detection features (B, E)."""
    return ((full_precision(global_feature) @ full_precision(anchors))[:, 1] + 1) / 2


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalise over the whole tensor (a class's maps or scores); constant -> zeros."""
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)


def as_is(x: torch.Tensor) -> torch.Tensor:
    """The identity: a score rule's terms as they are (one image alone, no normalisation)."""
    return x


def score_rule(
    maps: torch.Tensor, probs: torch.Tensor, domain: str, norm=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """AA-CLIP's rule: maps = norm(maps); industrial score = 0.5 * max(map) + 0.5 * norm(p),
    medical score = max(map). `norm` (default: none) normalises each raw term first."""
    norm = norm or as_is
    maps = norm(maps)
    peak = maps.flatten(1).max(dim=1).values
    if domain == "medical":
        return maps, peak
    return maps, 0.5 * peak + 0.5 * norm(probs)


def class_scores(
    maps: torch.Tensor, probs: torch.Tensor, domain: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class normalised maps and image scores: `score_rule` with every term min-max
    normalised over all the class's test images (maps over all their pixels)."""
    return score_rule(maps, probs, domain, minmax)
