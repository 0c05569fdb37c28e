"""Where and how things run: device choice, precision (fp64 / fp32 / bf16 autocast), the
thread policy, seeding and a readable device name."""

from __future__ import annotations

import os
import platform
import random
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

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


PRECISIONS = ("fp64", "fp32", "bf16")


def parameter_dtype(precision: str) -> torch.dtype:
    """The dtype weights and inputs are held in: float64 under `fp64`, float32 otherwise
    (bf16 is autocast over fp32 weights)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return torch.float64 if precision == "fp64" else torch.float32


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Tensors created without a dtype inside the block are `dtype`.

    Models are built inside `default_dtype(parameter_dtype(precision))`. Under `fp64` this
    also makes a random initialisation the same on every CPU: torch draws float32 normals
    with an ISA-specific vectorised kernel (AVX2/AVX-512 and the scalar fallback differ in the
    last bit), float64 normals with one scalar kernel.
    """
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """`t` in float32 when it came out of autocast (fp16/bf16); float32/float64 kept as is."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def autocast(device: torch.device, precision: str):
    """bf16 autocast on GPU when asked for; fp32/fp64 as the weights are everywhere else."""
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


# --------------------------------------------------------------------------- threads
THREADS_ENV = "AACLIP_THREADS"


def default_threads(tiny: bool) -> int:
    """The thread policy of every entry point (CLI, notebooks, grid and protocol workers).

    `$AACLIP_THREADS` when set; else one thread for the tiny smoke backbones (their tensors
    are too small for threads to pay; more only adds synchronisation) and every core for
    real backbones. Parallel workers (grid, protocol, notebook variants) each take one thread
    and as many workers run as there are cores. Results do not depend on it: the smoke
    profile computes in float64, far below the digits it reports.
    """
    value = os.environ.get(THREADS_ENV)
    if value:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"${THREADS_ENV} must be a positive integer, got {value!r}")
        return n
    return 1 if tiny else max(1, os.cpu_count() or 1)


_POLICY = {"on": False}


def use_thread_policy(on: bool = True) -> None:
    """Entry points (CLI, notebooks, workers) switch the policy on: from then on every
    backbone built on the CPU sets the threads `default_threads` gives. The Python API
    leaves torch's threads alone unless asked."""
    _POLICY["on"] = on


def apply_thread_policy(tiny: bool, device: torch.device | str = "cpu") -> int:
    """Under the policy (see `use_thread_policy`), set torch's intra-op threads for a CPU
    backbone; returns the threads in use."""
    if _POLICY["on"] and torch.device(device).type == "cpu":
        n = default_threads(tiny)
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    return torch.get_num_threads()


def device_name(device: torch.device) -> str:
    """'NVIDIA H100 …' or 'cpu (x86_64, 2 threads)': what run records and benchmarks state."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
