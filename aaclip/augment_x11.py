"""MVFA-AD's fixed x11 augmentation of the few-shot supports, as the release computes it.

Variant ``i`` of an image, in the released order (MVFA-AD ``utils.py`` ``augment``):

==  =====================  ======================================================
0   identity
1-4 rotations              by -pi/8, -pi/16, +pi/16, +pi/8
5-8 translations (a, b)    (0.1, 0.1), (-0.1, 0.1), (-0.1, -0.1), (0.1, -0.1)
9   horizontal flip        (last axis)
10  vertical flip          (second-last axis)
==  =====================  ======================================================

Rotations and translations warp with ``affine_grid`` (``align_corners=False``) and bilinear
``grid_sample`` with reflection padding. The 2x3 matrix maps output to input coordinates in
[-1, 1] units (x right, y down): output(x, y) = input(cos t x - sin t y + a, sin t x + cos t y
+ b). So a translation (a, b) samples a*W/2 px to the right and b*H/2 px below (content moves
left and up; 12 px at 240), and a positive angle turns the content counter-clockwise as
displayed. The rotation matrix is computed in float32 as the release does. Masks are warped
the same way (bilinear, not re-binarised: the training loop thresholds at 0.5); an image
without a mask (normal supports, classification-only sets) gets a zero mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ROTATIONS = (-math.pi / 8, -math.pi / 16, math.pi / 16, math.pi / 8)
SHIFTS = ((0.1, 0.1), (-0.1, 0.1), (-0.1, -0.1), (0.1, -0.1))
VARIANTS = (
    ("identity",)
    + tuple(f"rotate({t:+.4f})" for t in ROTATIONS)
    + tuple(f"shift({a:+.1f},{b:+.1f})" for a, b in SHIFTS)
    + ("hflip", "vflip")
)
"""Names of the 11 variants, in order."""


def variant_matrix(index: int) -> torch.Tensor | None:
    """The float32 2x3 ``affine_grid`` matrix of variant ``index`` (None: not a warp)."""
    if 1 <= index <= 4:
        t = torch.tensor(ROTATIONS[index - 1], dtype=torch.float64)
        c, s = torch.cos(t).float(), torch.sin(t).float()
        zero = torch.zeros((), dtype=torch.float32)
        return torch.stack([torch.stack([c, -s, zero]), torch.stack([s, c, zero])])
    if 5 <= index <= 8:
        a, b = SHIFTS[index - 5]
        return torch.tensor([[1.0, 0.0, a], [0.0, 1.0, b]], dtype=torch.float32)
    return None


def _apply(index: int, x: torch.Tensor) -> torch.Tensor:
    """Variant ``index`` of a batch (B, C, H, W)."""
    if index == 0:
        return x.clone()
    if index == 9:
        return x.flip(-1)
    if index == 10:
        return x.flip(-2)
    theta = variant_matrix(index)
    if theta is None:
        raise ValueError(f"x11 variant index must be in 0..10, got {index}")
    theta = theta.to(x.device, x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _as_batch(x: torch.Tensor, what: str, ndim: int) -> torch.Tensor:
    if x.ndim != ndim or not x.is_floating_point():
        raise ValueError(
            f"x11 augmentation: {what} must be a float tensor with {ndim} dims, "
            f"got {tuple(x.shape)} {x.dtype}"
        )
    return x if ndim == 4 else x.unsqueeze(0)


def _mask_for(image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, 1, H, W) float mask: the given one (2-D masks get a channel axis) or zeros."""
    b, _, h, w = image.shape
    if mask is None:
        return image.new_zeros(b, 1, h, w)
    m = mask.to(image.dtype)
    m = m.reshape(b, 1, h, w) if m.numel() == b * h * w else None
    if m is None:
        raise ValueError(
            f"x11 augmentation: mask {tuple(mask.shape)} does not fit image {tuple(image.shape)}"
        )
    return m


def x11_variant(
    index: int, image: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Variant ``index`` (0..10) of one image (C, H, W) and its mask ((1, H, W), (H, W) or
    None: zeros); returns (image (C, H, W), mask (1, H, W)). For datasets that expand
    each record x11 (item i = record i // 11, variant i % 11)."""
    x = _as_batch(image, "image", 3)
    m = _mask_for(x, mask)
    return _apply(index, x)[0], _apply(index, m)[0]


def augment_x11(
    image: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The 11 variants of one image (C, H, W) and of its mask (zeros when None), in order."""
    pairs = [x11_variant(i, image, mask) for i in range(len(VARIANTS))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def augment_x11_batch(
    images: torch.Tensor, masks: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(11B, C, H, W) images and (11B, 1, H, W) masks in the release's order: variant-major
    (all B originals, then all B rotated by -pi/8, ...)."""
    x = _as_batch(images, "images", 4)
    m = _mask_for(x, masks)
    out = [(_apply(i, x), _apply(i, m)) for i in range(len(VARIANTS))]
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])
