"""The run folder: `config.json`, `checkpoints/stage{n}_epoch{NNN}.safetensors`, `resume.pt`,
`train_log.jsonl`. Stage numbers are the 1-based index of a method's stages."""

from __future__ import annotations

import json
from pathlib import Path

from aaclip.config import ExperimentConfig


def checkpoint_path(run_dir: str | Path, stage: int, epoch: int) -> Path:
    """Where stage `stage` (1-based) epoch `epoch` of a run is stored."""
    return Path(run_dir) / "checkpoints" / f"stage{stage}_epoch{epoch:03d}.safetensors"


def read_log(run_dir: str | Path) -> list[dict]:
    """The training log: one dict per finished epoch (stage, stage_name, epoch, loss, terms)."""
    path = Path(run_dir) / "train_log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stage_epochs(cfg: ExperimentConfig) -> list[tuple[str, int]]:
    """(stage name, epochs actually run) per stage of the config's method, max_epochs applied."""
    from aaclip.methods import method_class

    cap = cfg.train.max_epochs
    return [
        (s.name, s.epochs if cap is None else min(s.epochs, cap))
        for s in method_class(cfg.method).schedule(cfg.model)
    ]


def last_stage(cfg: ExperimentConfig) -> tuple[int, int]:
    """(1-based index, epochs) of the last stage that runs at least one epoch; (0, 0) if none."""
    trained = [(i, e) for i, (_, e) in enumerate(stage_epochs(cfg), start=1) if e > 0]
    return trained[-1] if trained else (0, 0)


def final_checkpoint(run_dir: str | Path, cfg: ExperimentConfig) -> Path:
    """The checkpoint `test` evaluates: the configured fixed epoch, else the last epoch of the
    last stage."""
    stage, epochs = last_stage(cfg)
    if stage == 0:
        raise ValueError(f"method {cfg.method!r} has no training stage: nothing to evaluate")
    epoch = cfg.eval.epoch or epochs
    path = checkpoint_path(run_dir, stage, epoch)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint for epoch {epoch}; has training finished?")
    return path


def stage_checkpoints(run_dir: str | Path, cfg: ExperimentConfig) -> list[Path]:
    """Every existing checkpoint of the last stage, in epoch order (for checkpoint selection)."""
    stage, epochs = last_stage(cfg)
    paths = [checkpoint_path(run_dir, stage, e) for e in range(1, epochs + 1)]
    return [p for p in paths if p.is_file()]
