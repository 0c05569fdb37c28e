"""Golden numbers of every method: `<method>.py` computes them, `<method>.json` pins them.

Each `compute()` builds a seeded tiny model in float64 (portable: the same digits on every
CPU, whatever its vector units) and returns named numbers: maps, scores, losses, gradients.
`tests/test_golden.py` compares them to the JSON file under the native kernels and, in
subprocesses, under `ATEN_CPU_CAPABILITY=avx2` and `ATEN_CPU_CAPABILITY=default
MKL_ENABLE_INSTRUCTIONS=SSE4_2`. `python tests/golden/regenerate.py [METHOD ...]` rewrites the
values after an intended change (say why in the commit).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

from aaclip.runtime import default_dtype

HERE = Path(__file__).resolve().parent
# The kernel settings the goldens are checked under (`make test` runs all three).
KERNEL_SETTINGS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "scalar": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}


def methods() -> list[str]:
    """Methods with a golden file."""
    return sorted(p.stem for p in HERE.glob("*.json"))


def load(method: str) -> dict:
    """The pinned document of one method (values, tolerance, provenance)."""
    return json.loads((HERE / f"{method}.json").read_text())


def compute(method: str) -> dict[str, float]:
    """The method's golden numbers, freshly computed in float64."""
    module = importlib.import_module(f"golden.{method}")
    with default_dtype(torch.float64):
        return {k: float(v) for k, v in module.compute().items()}
