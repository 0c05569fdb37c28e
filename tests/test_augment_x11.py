"""MVFA's x11 support augmentation: each variant's geometry pinned on small asymmetric tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aaclip.augment_x11 import (
    ROTATIONS,
    SHIFTS,
    VARIANTS,
    augment_x11,
    augment_x11_batch,
    x11_variant,
)

H, W = 20, 20  # 5 % of 20 = 1 px: the translations are whole-pixel shifts


def asymmetric(c: int = 2, h: int = H, w: int = W) -> torch.Tensor:
    """Distinct values everywhere, no symmetry: any wrong flip, shift or sign shows."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(c, h, w, generator=g, dtype=torch.float64).float()


def reflect(i: int, n: int) -> int:
    """Reflection about the pixel edges (-0.5 and n - 0.5), align_corners=False."""
    while not 0 <= i < n:
        i = -1 - i if i < 0 else 2 * n - 1 - i
    return i


def slow_warp(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Direct bilinear resampling: out(y, x) = in(m @ (x, y, 1)) in [-1, 1] units."""
    c, h, w = x.shape
    out = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            xn, yn = (2 * j + 1) / w - 1, (2 * i + 1) / h - 1
            xs, ys = m @ np.array([xn, yn, 1.0])
            u, v = ((xs + 1) * w - 1) / 2, ((ys + 1) * h - 1) / 2

            def fold(t: float, n: int) -> float:  # reflect about -0.5 and n - 0.5, then clip
                span = 2 * n
                t = (t + 0.5) % span
                t = span - t if t > n else t
                return min(max(t - 0.5, 0.0), n - 1.0)

            u, v = fold(u, w), fold(v, h)
            j0, i0 = int(math.floor(u)), int(math.floor(v))
            j1, i1 = min(j0 + 1, w - 1), min(i0 + 1, h - 1)
            du, dv = u - j0, v - i0
            out[:, i, j] = (
                x[:, i0, j0] * (1 - du) * (1 - dv)
                + x[:, i0, j1] * du * (1 - dv)
                + x[:, i1, j0] * (1 - du) * dv
                + x[:, i1, j1] * du * dv
            )
    return out


def test_eleven_variants_in_the_released_order() -> None:
    assert len(VARIANTS) == 11
    assert VARIANTS[0] == "identity" and VARIANTS[9:] == ("hflip", "vflip")
    assert (-math.pi / 8, -math.pi / 16, math.pi / 16, math.pi / 8) == ROTATIONS
    assert SHIFTS == ((0.1, 0.1), (-0.1, 0.1), (-0.1, -0.1), (0.1, -0.1))
    x = asymmetric()
    images, masks = augment_x11(x)
    assert len(images) == len(masks) == 11
    assert torch.equal(images[0], x)
    assert torch.equal(images[9], x.flip(-1)) and torch.equal(images[10], x.flip(-2))
    assert all(m.shape == (1, H, W) and not m.any() for m in masks)  # no mask: zeros


@pytest.mark.parametrize("k", range(4))
def test_translations_are_diagonal_one_pixel_shifts_with_reflection(k: int) -> None:
    x = asymmetric()
    a, b = SHIFTS[k]
    dx, dy = round(a * W / 2), round(b * H / 2)  # +1 or -1 px
    out = x11_variant(5 + k, x)[0]
    expected = torch.empty_like(x)
    for i in range(H):
        for j in range(W):
            expected[:, i, j] = x[:, reflect(i + dy, H), reflect(j + dx, W)]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("k", range(4))
def test_rotations_match_a_direct_bilinear_reference(k: int) -> None:
    x = asymmetric(h=12, w=16)
    t = ROTATIONS[k]
    m = np.array([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]])
    out = x11_variant(1 + k, x)[0]
    torch.testing.assert_close(
        out, torch.from_numpy(slow_warp(x.numpy(), m)).float(), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("k", range(4))
def test_positive_angles_turn_content_counter_clockwise(k: int) -> None:
    x = torch.zeros(1, 41, 41)
    x[0, 19:22, 33:36] = 1.0  # a spot right of the centre
    out = x11_variant(1 + k, x)[0][0]
    ys, xs = torch.meshgrid(torch.arange(41.0), torch.arange(41.0), indexing="ij")
    cy, cx = (out * ys).sum() / out.sum() - 20, (out * xs).sum() / out.sum() - 20
    angle = math.atan2(-cy, cx)  # on screen, y down: counter-clockwise is positive
    assert angle == pytest.approx(ROTATIONS[k], abs=0.02)


def test_masks_follow_the_image_and_stay_soft() -> None:
    x = asymmetric(c=3)
    mask = torch.zeros(H, W)
    mask[4:9, 11:17] = 1.0
    images, masks = augment_x11(x, mask)
    for i, (img, m) in enumerate(zip(images, masks, strict=True)):
        assert m.shape == (1, H, W)
        torch.testing.assert_close(m, x11_variant(i, mask[None].expand(3, H, W))[0][:1])
        assert torch.equal(img, x11_variant(i, x)[0])
    assert ((masks[1] > 0) & (masks[1] < 1)).any()  # bilinear edges, thresholded later


def test_batch_is_variant_major_and_equals_single_images() -> None:
    x = torch.stack([asymmetric(c=3), asymmetric(c=3).flip(-1)])
    masks = (x[:, :1] > 0.5).float()
    out, out_m = augment_x11_batch(x, masks)
    assert out.shape == (22, 3, H, W) and out_m.shape == (22, 1, H, W)
    for i in range(11):
        for b in range(2):
            image, mask = x11_variant(i, x[b], masks[b])
            torch.testing.assert_close(out[2 * i + b], image, atol=1e-6, rtol=0)
            torch.testing.assert_close(out_m[2 * i + b], mask, atol=1e-6, rtol=0)


def test_bad_input_is_one_line() -> None:
    with pytest.raises(ValueError, match="must be a float tensor with 3 dims") as exc:
        x11_variant(0, torch.zeros(1, 3, 8, 8))
    assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="does not fit"):
        augment_x11(torch.zeros(3, 8, 8), torch.zeros(8, 9))
    with pytest.raises(ValueError, match="0..10"):
        x11_variant(11, torch.zeros(3, 8, 8))
