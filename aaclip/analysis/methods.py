"""Every registered method on the same records with the same metrics (notebook 07): which
methods the notebook's protocol applies to, their runs through `experiment.run`, one table
beside the published numbers, each release's checkpoint selection against ours, and the
maps of every method on the same images (paper Fig. 5)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from aaclip import results, runs
from aaclip.analysis.notebook import (
    METRICS_SHOWN,
    MissingInputsError,
    Notebook,
    profile_config,
    shots_label,
)
from aaclip.config import ExperimentConfig
from aaclip.results import format_number


def published_name(method: str) -> str:
    """The method's name in results/published_results.csv (its class's `published_name`)."""
    from aaclip.methods import method_class

    return method_class(method).published_name or method


def release_selection(method: str) -> str:
    """How the method's release chose its checkpoint (its class's `release_selection`)."""
    from aaclip.methods import method_class

    return method_class(method).release_selection


def our_selection(cfg: ExperimentConfig) -> str:
    """Which checkpoint our run scores: a fixed epoch from the config, never the test set."""
    stage, epochs = runs.last_stage(cfg)
    if stage == 0:
        return "no training: nothing to select"
    name = runs.stage_epochs(cfg)[stage - 1][0]
    epoch = cfg.eval.epoch or epochs
    why = "eval.epoch" if cfg.eval.epoch else "its last epoch"
    return f"fixed: stage {stage} ({name}) epoch {epoch}, {why}; never chosen on the test set"


# --------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """One method in the notebook's protocol: its config, or why it is skipped."""

    method: str
    cfg: ExperimentConfig | None
    skipped: str = ""


def plan(nb: Notebook, methods: Sequence[str] | None = None) -> list[Plan]:
    """Every registered method (or `methods`, in registry order) in the notebook's protocol.

    A method runs with its own preset of the profile (model, schedule, backbone) on the
    notebook's records. A method without a preset of the profile, or whose preset reads
    another data layout (records in other folders, or reference normals for a few-shot
    memory bank, as MVFA-AD's medical sets), is skipped with the reason.
    """
    from aaclip.methods import list_methods, method_class

    registered = list_methods()
    unknown = [m for m in methods or () if m not in registered]
    if unknown:
        raise MissingInputsError(f"methods {unknown} are not registered: {registered}")
    ours = {Path(p).parent for p in (nb.cfg.data.train_records, *nb.cfg.data.test_records)}
    out = []
    for m in registered:
        if methods and m not in methods:
            continue
        if nb.profile not in method_class(m).PRESETS:
            out.append(Plan(m, None, f"no {nb.profile!r} preset"))
            continue
        own = profile_config(nb.profile, _data_root(nb), nb.root, m)
        theirs = {Path(p).parent for p in (own.data.train_records, *own.data.test_records)}
        if theirs != ours or any(getattr(own.data, "memory_records", ())):
            names = ", ".join(own.data.test_datasets)
            where = (
                "the MVFA medical sets (see the MVFA protocol)"
                if any(p.name.endswith("_AD") for p in theirs)
                else f"another data layout (trains on {own.data.train_dataset}, tests on {names})"
            )
            out.append(Plan(m, None, f"its {nb.profile} preset reads {where}"))
            continue
        out.append(Plan(m, nb.config(m)))
    return out


def _data_root(nb: Notebook) -> str:
    first = Path(nb.cfg.data.test_records[0])
    return str(first.parent if nb.smoke else first.parent.parent)


# --------------------------------------------------------------------------- runs


@dataclass
class MethodRun:
    method: str
    seed: int
    cfg: ExperimentConfig
    result: Any  # experiment.ExperimentResult


def run_methods(
    nb: Notebook, plans: Sequence[Plan], progress: Callable[[str], None] | None = None
) -> list[MethodRun]:
    """`experiment.run` for every planned method and seed: train (or reuse the finished
    run; AA-CLIP's is notebook 02's), the fixed checkpoint, evaluate."""
    import time

    from aaclip.experiment import run

    out = []
    for p in plans:
        if p.cfg is None:
            continue
        for seed in nb.seeds:
            cfg = nb.config(p.method, seed)
            folder = nb.run_dir(nb.run_name(p.method, cfg))
            t0 = time.time()
            result = run(cfg, folder, device=nb.device, progress=False)
            if progress:
                progress(f"{p.method} seed {seed}: {time.time() - t0:.0f} s ({folder.name})")
            out.append(MethodRun(p.method, seed, cfg, result))
    return out


def long_table(method_runs: Sequence[MethodRun]) -> pd.DataFrame:
    """Per method, seed and test set: the mean over classes of every metric (fractions)."""
    parts = []
    for r in method_runs:
        means = r.result.table[r.result.table.class_name == "mean"]
        cols = [c for c in means.columns if c.startswith(("image_", "pixel_"))]
        part = means[["dataset", *cols]].copy()
        part.insert(0, "seed", r.seed)
        part.insert(0, "method", published_name(r.method))
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def cell(mean: float, std: float, n: int, digits: int = 1) -> str:
    """'66.2' for one seed, '66.2 ± 1.3' (sample std) for several; percent; '–' if none."""
    if pd.isna(mean):
        return "–"
    text = format_number(mean, digits, 100.0)
    return text if n <= 1 or pd.isna(std) else f"{text} ± {format_number(std, digits, 100.0)}"


def comparison_table(long: pd.DataFrame, metrics: Sequence[str] = METRICS_SHOWN) -> pd.DataFrame:
    """One row per test set and metric, one column per method: percent, mean ± std over
    seeds (`results.mean_std`), '–' where a method does not report a metric. Ends with the
    mean over the test sets (per seed, then over seeds)."""
    metrics = [m for m in metrics if m in long]
    per_seed = long.melt(id_vars=["method", "seed", "dataset"], value_vars=metrics,
                         var_name="metric")  # fmt: skip
    overall = (
        per_seed.groupby(["method", "seed", "metric"], sort=False)["value"].mean().reset_index()
    )
    overall.insert(2, "dataset", "mean over test sets")
    stats = results.mean_std(pd.concat([per_seed, overall]), ["dataset", "metric", "method"])
    stats["cell"] = [cell(r.mean, r.std, r.n) for r in stats.itertuples()]
    wide = stats.pivot(index=["dataset", "metric"], columns="method", values="cell")
    sets = [*dict.fromkeys(long.dataset), "mean over test sets"]
    order = pd.DataFrame([(d, m) for d in sets for m in metrics], columns=["dataset", "metric"])
    wide = order.merge(wide.reset_index(), on=["dataset", "metric"], how="left")
    methods = list(dict.fromkeys(long.method))
    wide = wide.rename(columns={"dataset": "test set"})[["test set", "metric", *methods]]
    return wide.fillna("–").reset_index(drop=True)


def beside_published(method_runs: Sequence[MethodRun]) -> pd.DataFrame:
    """Every measured mean (over seeds) beside the published number of the same method,
    training set, shots, target and metric, with source and confidence."""
    parts = []
    for r in method_runs:
        m = results.long_means(
            r.result.table, published_name(r.method), r.cfg.data.train_dataset, shots_label(r.cfg)
        )
        parts.append(m)
    measured = pd.concat(parts, ignore_index=True)
    measured = measured.groupby(results.KEYS, sort=False, as_index=False)["value"].mean()
    out = results.beside_published(measured)
    out[["source", "confidence"]] = out[["source", "confidence"]].fillna("")
    return out


def published_rows(methods: Sequence[str]) -> pd.DataFrame:
    """The published numbers of these methods (results/published_results.csv), as printed."""
    names = [published_name(m) for m in methods]
    pub = results.load_published()
    pub = pub[pub.method.isin(names)].copy()
    pub["method"] = pd.Categorical(pub.method, names, ordered=True)
    cols = ["method", "train_set", "shots", "target", "metric", "value", "source", "confidence"]
    return pub.sort_values("method", kind="stable")[cols].reset_index(drop=True)


def selection_table(plans: Sequence[Plan]) -> pd.DataFrame:
    """Per method: how its release selected the checkpoint, and which one we score."""
    return pd.DataFrame(
        [
            {
                "method": published_name(p.method),
                "release": release_selection(p.method),
                "ours": our_selection(p.cfg) if p.cfg is not None else f"skipped: {p.skipped}",
            }
            for p in plans
        ]
    )


# --------------------------------------------------------------------------- Fig. 5


def method_predictions(
    method_runs: Sequence[MethodRun], device: Any
) -> tuple[dict[Any, dict[str, dict[str, Any]]], dict[str, str]]:
    """Maps of every method (first seed) on every test set, merged as `qualitative_grid`
    wants them: {test set: {method: {class: ClassPredictions}}}, and the row labels."""
    from aaclip.analysis.alignment import predict_test_sets
    from aaclip.evaluate import load_methods

    merged: dict[Any, dict[str, dict[str, Any]]] = {}
    labels = {}
    seen = set()
    for r in method_runs:
        if r.method in seen:
            continue
        seen.add(r.method)
        ckpts = [r.result.checkpoint] if r.result.checkpoint else []
        loaded = load_methods(r.cfg, ckpts, device)
        model = next(iter(loaded.values()))
        for ts, per_model in predict_test_sets(r.cfg, {r.method: model}, device).items():
            merged.setdefault(ts, {})[r.method] = per_model[r.method]
        labels[r.method] = published_name(r.method)
        del loaded, model
    return merged, labels


# --------------------------------------------------------------------------- MVFA protocol

# Where a generic MVFA medical-protocol runner may live; the notebook picks up the first that
# exists (none: the section says so and runs nothing).
MVFA_PROTOCOL_CANDIDATES = (
    ("aaclip.medical", "run_grid"),
    ("aaclip.protocols", "mvfa_grid"),
    ("aaclip.protocols", "run_grid"),
)
# The part of the grid notebook 07 runs: the paper's columns are k = 0 (leave-one-out) and
# k = 4 on six sets; under smoke k = 4 on one set with masks and one without (minutes on a
# CPU), in quick mode on the first only. `aaclip protocol mvfa` runs the whole grid.
MVFA_GRID = {
    "paper": {"shots": (0, 4), "sets": None},
    "smoke": {"shots": (4,), "sets": ("Brain", "Chest")},
    "quick": {"shots": (4,), "sets": ("Brain",)},
}


def mvfa_protocol() -> Callable[..., Any] | None:
    """The generic MVFA medical-protocol runner, if the package has one yet."""
    for module, attr in MVFA_PROTOCOL_CANDIDATES:
        try:
            fn = getattr(importlib.import_module(module), attr, None)
        except ImportError:
            continue
        if callable(fn):
            return fn
    return None


def mvfa_methods() -> list[str]:
    """Registered methods that declare the MVFA protocol's modes (`PROTOCOLS`)."""
    from aaclip.methods import list_methods, method_class

    return [m for m in list_methods() if getattr(method_class(m), "PROTOCOLS", None)]


def run_mvfa_protocol(
    nb: Notebook,
    runner: Callable[..., Any],
    methods: Sequence[str] | None = None,
    workers: int = 1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The MVFA grid (`MVFA_GRID` of the profile) for every method it applies to, through
    the package's runner (`workers` cells at a time); run folders under the notebook's runs.
    Returns the long table (method, shots, target, metric, value) and the runner's table
    beside the published columns, one block per method."""
    grid = MVFA_GRID["quick" if nb.quick else ("smoke" if nb.smoke else "paper")]
    root = Path(_data_root(nb))
    data_root = root / "mvfa" if nb.smoke else root
    parts = []
    accepts = inspect.signature(runner).parameters
    for m in methods or mvfa_methods():
        where = nb.run_dir(nb.run_name(f"mvfa_protocol-{m}"))
        folders: dict[str, Any] = {"out_dir": where}
        if "runs_dir" in accepts:
            folders["runs_dir"] = where / "runs"
        if "workers" in accepts:
            folders["workers"] = workers
        result = runner(
            m,
            shots=grid["shots"],
            profile=nb.profile,
            **folders,
            data_root=data_root,
            sets=grid["sets"],
            overrides=[f"train.seed={nb.seeds[0]}"]
            + ([f"train.max_epochs={nb.epochs}"] if nb.epochs else [])
            + (["train.max_epochs=2"] if nb.quick else []),
            device=nb.device,
            progress=False,
        )
        long = result.long.copy()
        long["method"] = published_name(m)
        table = result.table.copy()
        table.insert(0, "method", published_name(m))
        parts.append((long, table))
    if not parts:
        return pd.DataFrame(), pd.DataFrame()
    return (
        pd.concat([p[0] for p in parts], ignore_index=True),
        pd.concat([p[1] for p in parts], ignore_index=True),
    )
