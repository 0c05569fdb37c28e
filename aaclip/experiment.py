"""One experiment: train (or reuse a finished run) -> the fixed checkpoint -> evaluate.

Used by the notebooks, the ablations, the learning tests and the protocol grids, so the
sequence is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from aaclip import runs
from aaclip.config import ExperimentConfig


@dataclass
class ExperimentResult:
    """A trained and evaluated configuration."""

    cfg: ExperimentConfig
    run_dir: Path
    checkpoint: Path | None  # None: a training-free method
    table: pd.DataFrame  # evaluate()'s long table


def run(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    device: str | None = None,
    progress: bool = False,
    aupro: bool = True,
) -> ExperimentResult:
    """Train every stage (resuming a finished or interrupted run), then score the checkpoint
    `runs.final_checkpoint` names on every test set of the config (tables under run_dir/eval)."""
    from aaclip.evaluate import evaluate
    from aaclip.train import train

    run_dir = Path(run_dir)
    checkpoint = None
    if runs.last_stage(cfg)[0]:
        train(cfg, run_dir, device=device, progress=progress)
        checkpoint = runs.final_checkpoint(run_dir, cfg)
    ckpts = [checkpoint] if checkpoint else []
    table = evaluate(cfg, ckpts, run_dir / "eval", device, progress=progress, aupro=aupro)
    return ExperimentResult(cfg, run_dir, checkpoint, table)
