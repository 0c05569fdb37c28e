"""Where and how things run: device choice, bf16 autocast, seeding, a readable device name."""

from __future__ import annotations

import platform
import random
from contextlib import nullcontext

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when available, else CPU.

    A string is checked by `aaclip.devices.parse_device`: a device this machine lacks, or an
    unknown name, is a one-line `DeviceError` now, not a CUDA traceback at the first tensor.
    """
    if isinstance(device, torch.device):
        return device
    from aaclip.devices import parse_device

    return parse_device(device)


def autocast(device: torch.device, precision: str):
    """bf16 autocast on GPU when asked for; fp32 everywhere else."""
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def device_name(device: torch.device) -> str:
    """'NVIDIA H100 …' or 'cpu (x86_64, 2 threads)': what run records and benchmarks state."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
