"""`--device` strings checked before any work starts: one line when the device is not usable.

`parse_device(None)` picks CUDA when PyTorch sees a GPU, else the CPU. An explicit string
must name a device this machine has: `cpu`, `cuda`, `cuda:N` or `mps`. Everything else
raises `DeviceError`, a ValueError whose message is one line and says what to pass instead
(instead of PyTorch's "Expected one of cpu, cuda, ipu, xpu, ..." or a CUDA initialisation
traceback at the first tensor moved).
"""

from __future__ import annotations

import re

import torch

__all__ = ["DeviceError", "parse_device"]

_FORM = re.compile(r"^(cpu|cuda|mps)(?::(\d+))?$")


class DeviceError(ValueError):
    """A device string names no device of this machine; the message is one line."""


def _gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def parse_device(text: str | None) -> torch.device:
    """The torch.device for a `--device` value; None, "" or "auto": CUDA if present, else CPU."""
    if text is None or not str(text).strip() or str(text).strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = str(text).strip().lower()
    match = _FORM.match(spec)
    if match is None:
        raise DeviceError(
            f"--device {text!r}: unknown device; use cpu, cuda, cuda:N or mps (or leave it out "
            "to use a GPU when there is one)"
        )
    kind, index = match.group(1), match.group(2)
    if kind == "cuda":
        count = _gpu_count()
        if count == 0:
            raise DeviceError(
                f"--device {text}: PyTorch sees no CUDA GPU on this machine "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
                "use --device cpu"
            )
        if index is not None and int(index) >= count:
            which = "only cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise DeviceError(
                f"--device {text}: this machine has {count} CUDA GPU{'s' * (count > 1)} ({which})"
            )
    if kind == "mps" and not _mps_available():
        raise DeviceError(f"--device {text}: Apple MPS is not available here; use --device cpu")
    return torch.device(spec)
