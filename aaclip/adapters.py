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
