"""Losses shared by the methods: focal and dice as the released AA-CLIP code computes them."""

from __future__ import annotations

import torch

_EPS = 1e-5


def focal_loss(probs: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss on 2-channel probabilities (B, 2, H, W) against a binary mask (B, 1, H, W).

    The released variant: no alpha weighting; one-hot targets clamped to [1e-5, 1 - 1e-5];
    pt = sum_c onehot_c * p_c + 1e-5; loss = mean(-(1 - pt)^gamma * log(pt)).
    """
    target = mask.reshape(mask.shape[0], -1).long()
    p_abn = probs[:, 1].reshape(probs.shape[0], -1)
    p_nrm = probs[:, 0].reshape(probs.shape[0], -1)
    p_true = torch.where(target == 1, p_abn, p_nrm)
    p_other = torch.where(target == 1, p_nrm, p_abn)
    pt = (1 - _EPS) * p_true + _EPS * p_other + _EPS
    return (-((1 - pt) ** gamma) * pt.log()).mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - (2|P∩T| + 1) / (|P| + |T| + 1) per sample, averaged over the batch."""
    p = pred.reshape(pred.shape[0], -1)
    t = target.reshape(target.shape[0], -1)
    dice = (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return 1 - dice.mean()


def segmentation_loss(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Focal(P, M) + Dice(P_normal, 1 - M) + Dice(P_abnormal, M)."""
    return (
        focal_loss(probs, mask)
        + dice_loss(probs[:, 0], 1 - mask[:, 0])
        + dice_loss(probs[:, 1], mask[:, 0])
    )


def disentangle_loss(anchors: torch.Tensor) -> torch.Tensor:
    """(mean over the batch of <t_normal, t_abnormal>)^2 for anchors (B, E, 2)."""
    return (anchors[:, :, 0] * anchors[:, :, 1]).sum(1).mean() ** 2


def token_prototypes(
    features: torch.Tensor, abnormal: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Unit means of the anomalous and of the normal tokens of a batch, pooled over its images.

    features (B, L, E); abnormal (B, L) bool. Every token weighs the same (a large defect
    weighs more than a small one). None when either set is empty (no decoupling term).
    """
    a, n = features[abnormal], features[~abnormal]
    if a.shape[0] == 0 or n.shape[0] == 0:
        return None
    return (
        torch.nn.functional.normalize(a.mean(0), dim=0),
        torch.nn.functional.normalize(n.mean(0), dim=0),
    )


def decoupling_loss(
    abnormal: torch.Tensor,
    normal: torch.Tensor,
    proto_abnormal: torch.Tensor | None = None,
    proto_normal: torch.Tensor | None = None,
) -> torch.Tensor:
    """DP-CLIP's decoupling of unit batch means a, n (E,) from each other.

    Without prototypes (the first batch that has anomalous tokens): (a . n)^2. With momentum
    prototypes P_a, P_n: ((a . P_n)^2 + (n . P_a)^2) / 2, the prototypes held constant.
    """
    if proto_abnormal is None or proto_normal is None:
        return torch.dot(abnormal, normal) ** 2
    return (torch.dot(abnormal, proto_normal) ** 2 + torch.dot(normal, proto_abnormal) ** 2) / 2
