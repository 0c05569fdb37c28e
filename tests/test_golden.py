"""Golden numbers of every method (`tests/golden/<method>.json`), on any CPU.

Each method's `compute()` (in `tests/golden/<method>.py`) builds a seeded tiny model in
float64 and returns maps, scores, losses and gradients; every value must match its pinned
one within the file's tolerance (1e-9 relative). In float64 the kernels' rounding (AVX-512,
AVX2, the scalar fallback, thread counts) moves no value by more than 2e-13 relative (worst
seen, MVFA's few-shot score under AVX2), while a real change of the computation moves the
numbers by far more than 1e-9.
`test_golden_under_kernel_settings` re-runs this file under the other kernel settings.
After an intended change: `python tests/golden/regenerate.py METHOD` (say why in the commit).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import golden
import pytest

CASES = [(m, k) for m in golden.methods() for k in sorted(golden.load(m)["values"])]


@pytest.fixture(scope="module")
def computed() -> dict[str, dict[str, float]]:
    return {}


def _values(computed: dict, method: str) -> dict[str, float]:
    if method not in computed:
        computed[method] = golden.compute(method)
    return computed[method]


@pytest.mark.parametrize("method", golden.methods())
def test_golden_file_covers_every_computed_number(computed, method):
    doc = golden.load(method)
    assert doc["dtype"] == "float64" and set(doc["kernel_settings"]) == set(golden.KERNEL_SETTINGS)
    assert sorted(_values(computed, method)) == sorted(doc["values"])


@pytest.mark.parametrize(("method", "name"), CASES)
def test_golden_value(computed, method, name):
    doc = golden.load(method)
    got, want = _values(computed, method)[name], doc["values"][name]
    tol = doc["tolerance"]
    assert got == pytest.approx(want, rel=tol["rel"], abs=tol["abs"]), (
        f"{method} {name}: got {got!r}, golden {want!r}; if intended, regenerate with "
        f"`python tests/golden/regenerate.py {method}` and say why in the commit"
    )


@pytest.mark.parametrize("setting", [s for s in golden.KERNEL_SETTINGS if s != "native"])
def test_golden_under_kernel_settings(setting):
    """The same file, in a fresh process whose kernels are forced to another ISA level."""
    env = {**os.environ, **golden.KERNEL_SETTINGS[setting], "PYTHONPATH": str(Path.cwd())}
    env.pop("PYTEST_XDIST_WORKER", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
           "-k", "not kernel_settings", __file__]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"under {golden.KERNEL_SETTINGS[setting]}:\n{done.stdout[-3000:]}"
