"""Evaluation protocols: cross-dataset zero-shot, k-shot, full-shot, MVFA leave-one-out, and
checkpoint choice (fixed epoch by default; validation split on request; test set only flagged).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from aaclip import data
from aaclip.config import ExperimentConfig, apply_overrides
from aaclip.runs import stage_checkpoints

FEW_SHOTS = (1, 2, 4, 8, 16, 32, 64)


def zero_shot(
    cfg: ExperimentConfig, train_records: str, train_dataset: str, tests: dict[str, str]
) -> ExperimentConfig:
    """Train on one dataset, test on a list of others (dataset name -> records file)."""
    return apply_overrides(
        cfg,
        [
            f"data.train_records={train_records}",
            f"data.train_dataset={train_dataset}",
            f"data.test_records={list(tests.values())}".replace("'", '"'),
            f"data.test_datasets={list(tests)}".replace("'", '"'),
            "data.test_domains=[]",
        ],
    )


def few_shot(cfg: ExperimentConfig, k: int | None) -> ExperimentConfig:
    """k images per class (1:1 normal:anomalous, seeded) from the training records; None = full."""
    if k is not None and k < 1:
        raise ValueError(f"shots must be a positive integer or None (full-shot), got {k}")
    return apply_overrides(cfg, [f"train.shots={'null' if k is None else k}"])


def merge_records(sources: list[str | Path], out: str | Path) -> Path:
    """Write the records of several files into one, paths rewritten relative to `out`'s folder."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    merged = []
    for src in map(Path, sources):
        root = src.parent
        for r in data.load_records(src, require_masks=False):

            def rel(p: str | None, root: Path = root) -> str | None:
                return os.path.relpath(root / p, out.parent) if p else None

            merged.append(data.Record(rel(r.image_path), r.label, r.class_name, rel(r.mask_path)))
    data.write_records(out, merged)
    return out


def leave_one_out(
    cfg: ExperimentConfig, sets: dict[str, str], target: str, work_dir: str | Path
) -> ExperimentConfig:
    """MVFA's zero-shot protocol: train on the test splits of all other sets, test on `target`."""
    if target not in sets:
        raise ValueError(f"target {target!r} is not among the sets {sorted(sets)}")
    others = [path for name, path in sets.items() if name != target]
    merged = merge_records(others, Path(work_dir) / f"leave_out_{target}.jsonl")
    return zero_shot(cfg, str(merged), f"all-but-{target}", {target: sets[target]})


def select_epoch(table: pd.DataFrame, metric: str = "pixel_auroc") -> str:
    """The checkpoint with the best mean `metric` over datasets (ties: the earliest)."""
    means = table[table["class_name"] == "mean"].groupby("checkpoint", sort=True)[metric].mean()
    if means.isna().all():
        raise ValueError(f"cannot select a checkpoint: {metric} is undefined on this split")
    return str(means.idxmax())


def select_on_validation(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    validation_records: str,
    metric: str = "pixel_auroc",
    domain: str = "industrial",
    out_dir: str | Path | None = None,
) -> Path:
    """Score every last-stage checkpoint on a validation split (one pass); the best one."""
    from aaclip.evaluate import evaluate

    val_cfg = apply_overrides(
        cfg,
        [
            f'data.test_records=["{validation_records}"]',
            'data.test_datasets=["validation"]',
            f'data.test_domains=["{domain}"]',
        ],
    )
    ckpts = stage_checkpoints(run_dir, cfg)
    if not ckpts:
        raise FileNotFoundError(f"{run_dir}: no last-stage checkpoints to select from")
    out = out_dir or Path(run_dir) / "validation"
    table = evaluate(val_cfg, ckpts, out, progress=False, aupro=False)
    best = select_epoch(table, metric)
    return next(p for p in ckpts if p.stem == best)
