"""Result tables: CSV + markdown side by side, and measured numbers beside the published ones."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from aaclip.fileio import atomic_write_text

# Where exploration writes unless asked otherwise (`--out results/...`): notebooks run with
# other parameters than `make reproduce`'s, `aaclip protocol`, `aaclip bench`. Untracked
# (.gitignore: results/**/_scratch/), so the tracked results/ only change on purpose.
SCRATCH = Path("results") / "_scratch"

PUBLISHED = Path(__file__).resolve().parent.parent / "results" / "published_results.csv"
KEYS = ["method", "train_set", "shots", "target", "metric"]


# Significant digits of every reported number (tables' CSVs, notebook summaries). The smoke
# profile computes in float64, so what differs between CPUs, kernels and thread counts (about
# 1e-16, up to ~1e-11 after training amplifies it) stays five orders below the last digit.
REPORTED_DIGITS = 6


def reported(x: float) -> float:
    """`x` rounded to `REPORTED_DIGITS` significant digits (NaN and inf kept)."""
    if not math.isfinite(x) or x == 0:
        return x
    return float(f"{x:.{REPORTED_DIGITS}g}")


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    """`df` as CSV (atomically), floats to `REPORTED_DIGITS` significant digits."""
    rounded = df.copy()
    for col in rounded.columns:
        if pd.api.types.is_float_dtype(rounded[col]):
            rounded[col] = rounded[col].map(reported)
    atomic_write_text(Path(path), rounded.to_csv(index=False))


def write_table(
    df: pd.DataFrame,
    stem: str | Path,
    note: str = "",
    digits: int = 2,
    percent: Sequence[str] | None = None,
) -> None:
    """Write `stem.csv` (numbers to `REPORTED_DIGITS` significant digits) and `stem.md`
    (percent, missing shown as '–')."""
    stem = Path(stem)
    write_csv(df, stem.with_suffix(".csv"))
    md = to_markdown(df, digits, percent)
    atomic_write_text(stem.with_suffix(".md"), (f"> {note}\n\n" if note else "") + md + "\n")


def format_number(v: float, digits: int = 2, scale: float = 1.0) -> str:
    """`v * scale` with `digits` decimals; missing as '–'; never '-0.00'."""
    if pd.isna(v):
        return "–"
    text = f"{v * scale:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def to_markdown(df: pd.DataFrame, digits: int = 2, percent: Sequence[str] | None = None) -> str:
    """A GitHub-markdown table; metric fractions in [0, 1] are shown as percentages.

    `percent` names the columns shown as percentages (default: the `image_*` / `pixel_*`
    metric columns); every other float column is shown as is.
    """
    shown = df.copy()
    for col in shown.columns:
        if pd.api.types.is_float_dtype(shown[col]):
            is_fraction = (
                col in percent if percent is not None else col.startswith(("image_", "pixel_"))
            )
            scale = 100.0 if is_fraction else 1.0
            shown[col] = shown[col].map(lambda v, s=scale: format_number(v, digits, s))
    header = "| " + " | ".join(map(str, shown.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in shown.columns) + " |"
    rows = ["| " + " | ".join(map(str, r)) + " |" for r in shown.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def load_published(path: str | Path = PUBLISHED) -> pd.DataFrame:
    """The published numbers with their sources (results/published_results.csv)."""
    df = pd.read_csv(path, dtype={"shots": str})
    return df


def beside_published(measured: pd.DataFrame, published: pd.DataFrame | None = None) -> pd.DataFrame:
    """Join measured means with published numbers: measured, published and difference (points).

    `measured` has columns method, train_set, shots, target, metric, value (fractions in [0, 1]).
    Published values are percentages. Rows with no published counterpart keep NaN there.
    """
    published = load_published() if published is None else published
    m = measured.copy()
    m["shots"] = m["shots"].astype(str)
    m["measured"] = 100.0 * m.pop("value")
    p = published[[*KEYS, "value", "source", "confidence"]].rename(columns={"value": "published"})
    p = p.drop_duplicates(subset=KEYS, keep="first")
    out = m.merge(p, on=KEYS, how="left")
    out["difference"] = out["measured"] - out["published"]
    return out[[*KEYS, "measured", "published", "difference", "source", "confidence"]]


def long_means(table: pd.DataFrame, method: str, train_set: str, shots: str) -> pd.DataFrame:
    """Per-dataset 'mean' rows of an evaluation table as long (target, metric, value) rows."""
    means = table[table["class_name"] == "mean"]
    metric_cols = [c for c in means.columns if c.startswith(("image_", "pixel_"))]
    long = means.melt(id_vars=["dataset"], value_vars=metric_cols, var_name="metric")
    long = long.rename(columns={"dataset": "target"})
    long.insert(0, "shots", str(shots))
    long.insert(0, "train_set", train_set)
    long.insert(0, "method", method)
    return long


def mean_std(table: pd.DataFrame, by: list[str], value: str = "value") -> pd.DataFrame:
    """Seeds as an axis: mean, sample standard deviation (NaN for one row) and count `n` of
    `value` over the rows sharing the columns `by` (every column but the seed, usually)."""
    stats = table.groupby(list(by), sort=False, dropna=False)[value]
    return stats.agg(mean="mean", std="std", n="count").reset_index()


def mean_std_table(
    stats: pd.DataFrame, columns: str = "metric", digits: int = 2, scale: float = 100.0
) -> pd.DataFrame:
    """`mean_std` output for reading (AdaptCLIP-style): one column per value of `columns`,
    cells 'mean ± std' (times `scale`: percent by default; '–' where undefined)."""

    def cell(row: pd.Series) -> str:
        if pd.isna(row["mean"]):
            return "–"
        std = "–" if pd.isna(row["std"]) else f"{row['std'] * scale:.{digits}f}"
        return f"{row['mean'] * scale:.{digits}f} ± {std}"

    keys = [c for c in stats.columns if c not in (columns, "mean", "std", "n")]
    shown = stats.assign(cell=stats.apply(cell, axis=1))
    wide = shown.pivot(index=keys, columns=columns, values="cell")
    wide = wide[list(dict.fromkeys(stats[columns]))].join(  # columns in first-seen order
        shown.groupby(keys, sort=False, dropna=False)["n"].max().rename("seeds")
    )
    order = stats[keys].drop_duplicates()  # rows in first-seen order too
    return order.merge(wide.reset_index(), on=keys, how="left").rename_axis(columns=None)


# --------------------------------------------------------------------------- paper settings

def published_name(method: str) -> str:
    """The name a method has in `published_results.csv`: its class's `published_name` (an
    unregistered name, e.g. a published-only baseline, is itself)."""
    from aaclip.methods import METHODS

    cls = METHODS.get(method)
    return (cls.published_name if cls is not None else None) or method


def shots_label(cfg) -> str:
    """'full' or the k of k-shot training, as in published_results.csv."""
    return "full" if cfg.train.shots is None else str(cfg.train.shots)


def _shots(shots: int | None) -> str:
    return "full-shot" if shots is None else f"{shots}-shot"


def deviations(cfg, *, selected_on_test: bool = False, checkpoint: str | None = None) -> list[str]:
    """Where a config's settings differ from its method's paper preset, one phrase each:
    backbone, image size, epochs per stage, shots, training set, targets (a subset, or
    others), checkpoint selection, evaluation batch and model switches. [] for the paper's
    own settings. `checkpoint`: the scored file's stem (e.g. `stage2_epoch010`)."""
    import dataclasses
    import re

    from aaclip.config import preset
    from aaclip.runs import stage_epochs

    try:
        paper = preset("paper", cfg.method)
    except ValueError:
        return [f"{cfg.method} has no paper preset to compare with"]
    out: list[str] = []
    b, pb = cfg.backbone, paper.backbone
    if b.name != pb.name:
        out.append(f"backbone {b.name} (paper {pb.name})")
    if b.image_size != pb.image_size:
        out.append(f"image size {b.image_size} px (paper {pb.image_size})")
    for key in ("quick_gelu", "precision"):
        if getattr(b, key) != getattr(pb, key):
            out.append(f"backbone.{key}={getattr(b, key)} (paper {getattr(pb, key)})")
    ours, theirs = stage_epochs(cfg), stage_epochs(paper)
    for (name, e), (_, pe) in zip(ours, theirs, strict=False):
        if e != pe:
            out.append(f"stage {name}: {e} epochs (paper {pe})")
    if cfg.train.shots != paper.train.shots:
        out.append(f"{_shots(cfg.train.shots)} training (paper {_shots(paper.train.shots)})")
    if cfg.data.train_dataset != paper.data.train_dataset:
        out.append(f"trained on {cfg.data.train_dataset} (paper {paper.data.train_dataset})")
    targets, paper_targets = list(cfg.data.test_datasets), list(paper.data.test_datasets)
    missing = [t for t in paper_targets if t not in targets]
    others = [t for t in targets if t not in paper_targets]
    if missing and len(missing) < len(paper_targets):
        out.append(
            f"{len(paper_targets) - len(missing)} of the paper's {len(paper_targets)} targets "
            f"(without {', '.join(missing)})"
        )
    elif missing:
        out.append(f"none of the paper's {len(paper_targets)} targets")
    if others:
        out.append(f"targets outside the paper: {', '.join(others)}")
    if selected_on_test:
        out.append("checkpoint selected on the test set (optimistic)")
    elif ours and any(e for _, e in ours):
        expected = None
        last = [(i, e) for i, (_, e) in enumerate(theirs, start=1) if e > 0]
        if last:
            stage, epochs = last[-1]
            expected = f"stage{stage}_epoch{(paper.eval.epoch or epochs):03d}"
        match = re.fullmatch(r"stage\d+_epoch\d+", checkpoint or "")
        if match and expected and checkpoint != expected:
            out.append(f"checkpoint {checkpoint} (paper {expected})")
        elif not match and cfg.eval.epoch != paper.eval.epoch:
            out.append(f"eval.epoch={cfg.eval.epoch} (paper {paper.eval.epoch or 'the last'})")
    if cfg.eval.batch_size != paper.eval.batch_size:
        out.append(f"evaluation batch {cfg.eval.batch_size} (paper {paper.eval.batch_size})")
    if type(cfg.model) is type(paper.model):
        for f in dataclasses.fields(cfg.model):
            if "epochs" in f.name:  # stated per stage above
                continue
            v, pv = getattr(cfg.model, f.name), getattr(paper.model, f.name)
            if v != pv:
                out.append(f"model.{f.name}={_plain(v)} (paper {_plain(pv)})")
    return out


def _plain(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, list | tuple) else str(v)


def deviations_note(cfg, **kwargs) -> str:
    """One sentence for tables: 'Differs from the paper's settings: a; b.' ('' if none)."""
    found = deviations(cfg, **kwargs)
    return f"Differs from the paper's settings: {'; '.join(found)}." if found else ""
