"""Adapter blocks shared by the methods (AA-CLIP, DP-CLIP, …): small, stateless modules."""

from __future__ import annotations

import torch
from torch import nn


class Adapter(nn.Module):
    """Linear (no bias) + LeakyReLU, the residual adapter of every adapted block."""

    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(width, width, bias=False), nn.LeakyReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Projection(nn.Module):
    """Linear (no bias), optionally followed by LeakyReLU."""

    def __init__(self, c_in: int, c_out: int, relu: bool):
        super().__init__()
        linear = nn.Linear(c_in, c_out, bias=False)
        self.fc = nn.Sequential(linear, nn.LeakyReLU()) if relu else linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def residual_adapt(x: torch.Tensor, adapter: nn.Module, weight: float) -> torch.Tensor:
    """x <- w * a + (1 - w) * x with a = adapter(x) rescaled to the per-token norm of x."""
    a = adapter(x)
    a = a * x.norm(dim=-1, keepdim=True) / a.norm(dim=-1, keepdim=True)
    return weight * a + (1 - weight) * x


def xavier_init(*modules: nn.Module) -> None:
    """Xavier-uniform for every weight matrix of the modules (the released adapters' init)."""
    for module in modules:
        for p in module.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)


# --------------------------------------------------------------------------- DP-CLIP pieces
GRN_AXES = {"tokens": 1, "batch": 0}  # which axis of a batch-first (B, N, C) tensor g pools


def global_response_norm(
    x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, dim: int = 1, eps: float = 1e-6
) -> torch.Tensor:
    """GRN of a batch-first (B, N, C) tensor: x + beta + gamma * (x * n).

    g = L2 norm of x over `dim` (1: the tokens of each image; 0: the images of the batch at
    each token position); n = g / (mean of g over channels + eps). With gamma = beta = 0 (the
    released init) it is the identity.
    """
    g = x.norm(p=2, dim=dim, keepdim=True)
    n = g / (g.mean(dim=-1, keepdim=True) + eps)
    return x + torch.addcmul(beta, gamma, x * n)


class GlobalResponseNorm(nn.Module):
    """GRN with learned per-channel gamma (`weight`) and beta (`bias`), both starting at 0."""

    def __init__(self, width: int, axis: str = "tokens", eps: float = 1e-6):
        super().__init__()
        if axis not in GRN_AXES:
            raise ValueError(f"GRN axis must be one of {sorted(GRN_AXES)}, got {axis!r}")
        self.axis, self.eps = axis, eps
        self.weight = nn.Parameter(torch.zeros(width))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return global_response_norm(x, self.weight, self.bias, GRN_AXES[self.axis], self.eps)


class GRNAdapter(nn.Module):
    """Linear (no bias) -> GRN -> LeakyReLU: DP-CLIP's residual adapter of a vision block."""

    def __init__(self, width: int, axis: str = "tokens"):
        super().__init__()
        self.fc = nn.Linear(width, width, bias=False)
        self.grn = GlobalResponseNorm(width, axis)
        self.act = nn.LeakyReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.grn(self.fc(x)))


class GRNProjection(nn.Module):
    """Linear (no bias) -> GRN over the tokens [-> LeakyReLU]: DP-CLIP's seg/det projection."""

    def __init__(self, c_in: int, c_out: int, relu: bool):
        super().__init__()
        self.fc = nn.Linear(c_in, c_out, bias=False)
        self.grn = GlobalResponseNorm(c_out, "tokens")
        self.act = nn.LeakyReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.grn(self.fc(x)))


def momentum_update(prototype: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """L2norm(alpha * prototype + (1 - alpha) * x): an exponential moving unit vector."""
    return nn.functional.normalize(alpha * prototype + (1 - alpha) * x, dim=-1)


class PrototypeMemory(nn.Module):
    """Momentum prototypes (abnormal, normal) of `pairs` feature spaces, kept as buffers so
    that checkpoints hold them and a resumed run continues bit-exactly.

    `ready[k]`: pair k was initialised; `last_*[k]`, `has_last[k]`: the most recent batch
    means seen for pair k (the released update re-applies them after a batch without any
    anomalous token).
    """

    def __init__(self, pairs: int, width: int):
        super().__init__()
        for name in ("abnormal", "normal", "last_abnormal", "last_normal"):
            self.register_buffer(name, torch.zeros(pairs, width))
        self.register_buffer("ready", torch.zeros(pairs, dtype=torch.bool))
        self.register_buffer("has_last", torch.zeros(pairs, dtype=torch.bool))

    @property
    def pairs(self) -> int:
        return self.abnormal.shape[0]

    @torch.no_grad()
    def initialise(self, k: int, abnormal: torch.Tensor, normal: torch.Tensor) -> None:
        self.abnormal[k] = abnormal
        self.normal[k] = normal
        self.ready[k] = True

    @torch.no_grad()
    def remember(self, k: int, abnormal: torch.Tensor, normal: torch.Tensor) -> None:
        self.last_abnormal[k] = abnormal
        self.last_normal[k] = normal
        self.has_last[k] = True

    @torch.no_grad()
    def step(self, k: int, alpha: float) -> None:
        """Move pair k towards its last batch means (momentum `alpha`), re-normalised."""
        self.abnormal[k] = momentum_update(self.abnormal[k], self.last_abnormal[k], alpha)
        self.normal[k] = momentum_update(self.normal[k], self.last_normal[k], alpha)
