"""Losses and scoring against direct re-statements of the released formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import convolve

from aaclip import losses, scoring


def _reference_focal(probs, mask, gamma=2.0, smooth=1e-5):
    """Released focal loss restated: flatten, one-hot, clamp, pt = sum(onehot*p) + smooth."""
    p = probs.permute(0, 2, 3, 1).reshape(-1, 2)
    idx = mask.reshape(-1).long()
    onehot = torch.zeros(len(idx), 2).scatter_(1, idx[:, None], 1)
    onehot = onehot.clamp(smooth, 1 - smooth)
    pt = (onehot * p).sum(1) + smooth
    return (-((1 - pt) ** gamma) * pt.log()).mean()


def _probs_and_mask(seed=0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.randn(3, 2, 8, 8, generator=g).softmax(1)
    mask = (torch.rand(3, 1, 8, 8, generator=g) > 0.7).float()
    return probs, mask


def test_focal_matches_released_formula():
    probs, mask = _probs_and_mask()
    assert torch.allclose(losses.focal_loss(probs, mask), _reference_focal(probs, mask), atol=1e-7)


def test_dice_perfect_and_disjoint():
    m = torch.zeros(2, 4, 4)
    m[:, :2] = 1
    assert losses.dice_loss(m, m).item() == pytest.approx(0.0, abs=1e-7)
    # disjoint: 1 - 1/(8+8+1) for each sample
    assert losses.dice_loss(1 - m, m).item() == pytest.approx(1 - 1 / 17, abs=1e-6)


def test_segmentation_loss_is_focal_plus_two_dice():
    probs, mask = _probs_and_mask(1)
    expected = (
        _reference_focal(probs, mask)
        + losses.dice_loss(probs[:, 0], 1 - mask[:, 0])
        + losses.dice_loss(probs[:, 1], mask[:, 0])
    )
    assert torch.allclose(losses.segmentation_loss(probs, mask), expected, atol=1e-7)


def test_disentangle_loss_is_squared_mean_inner_product():
    a = torch.nn.functional.normalize(torch.randn(4, 16, 2), dim=1)
    inner = (a[:, :, 0] * a[:, :, 1]).sum(1)
    assert torch.allclose(losses.disentangle_loss(a), inner.mean() ** 2)
    orth = torch.zeros(1, 4, 2)
    orth[0, 0, 0] = orth[0, 1, 1] = 1
    assert losses.disentangle_loss(orth).item() == 0.0


@pytest.mark.parametrize(("domain", "k", "sigma"), [("industrial", 7, 1.0), ("medical", 9, 1.5)])
def test_blur_matches_explicit_reflect_convolution(domain, k, sigma):
    x = torch.rand(2, 1, 12, 12)
    half = k // 2
    coords = np.arange(k) - half
    g = np.exp(-(coords**2) / (2 * sigma**2))
    g /= g.sum()
    kernel = np.outer(g, g)
    ref = np.stack([convolve(x[i, 0].numpy(), kernel, mode="mirror") for i in range(2)])
    out = scoring.gaussian_blur(x, *scoring.BLUR[domain])[:, 0].numpy()
    assert np.allclose(out, ref, atol=1e-6)


def test_anomaly_map_of_aligned_features_peaks_at_the_defect():
    e = 8
    anchors = torch.zeros(e, 2)
    anchors[0, 0] = anchors[1, 1] = 1  # normal along e0, abnormal along e1
    feats = torch.zeros(1, 16 * 16, e)
    feats[..., 0] = 1
    defect = torch.zeros(16, 16, dtype=torch.bool)
    defect[4:7, 9:12] = True
    feats[0, defect.flatten(), 0] = 0
    feats[0, defect.flatten(), 1] = 1
    m = scoring.anomaly_map([feats], anchors, 64, "industrial")[0]
    peak = np.unravel_index(m.argmax().item(), m.shape)
    assert 16 <= peak[0] < 28 and 36 <= peak[1] < 48


def test_class_scores_rules():
    maps = torch.tensor([[[0.0, 1.0]], [[2.0, 3.0]], [[4.0, 9.0]]])
    probs = torch.tensor([0.2, 0.4, 0.3])
    nm, ind = scoring.class_scores(maps, probs, "industrial")
    assert nm.min() == 0 and nm.max() == 1
    peak = torch.tensor([1 / 9, 3 / 9, 1.0])
    assert torch.allclose(ind, 0.5 * peak + 0.5 * torch.tensor([0.0, 1.0, 0.5]))
    _, med = scoring.class_scores(maps, probs, "medical")
    assert torch.allclose(med, peak)


def test_minmax_of_constant_is_zero_not_nan():
    assert torch.equal(scoring.minmax(torch.ones(3)), torch.zeros(3))


def test_training_probs_sum_to_one():
    f = torch.nn.functional.normalize(torch.randn(2, 16, 8), dim=-1)
    a = torch.nn.functional.normalize(torch.randn(2, 8, 2), dim=1)
    p = scoring.training_probs(f, a, 20)
    assert p.shape == (2, 2, 20, 20)
    assert torch.allclose(p.sum(1), torch.ones(2, 20, 20), atol=1e-6)
