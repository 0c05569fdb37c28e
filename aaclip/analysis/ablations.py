"""Configured variants of a method, trained and evaluated the same way (notebooks 04–05):
the known-defect switches (`Method.ablations`), AA-CLIP's component ablation (paper Table 3)
and data efficiency over k-shot training sets (paper Fig. 4)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import re
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pandas as pd

from aaclip.analysis.notebook import REPRODUCE_PARAMETERS, mean_rows
from aaclip.config import ExperimentConfig, apply_overrides, switch_method

T = TypeVar("T")

# Variant runs under smoke train fewer epochs than the main run (the method's
# `SMOKE_VARIANT_EPOCHS`); quick mode: 1 per stage.
QUICK_VARIANT_EPOCHS = ("train.max_epochs=1",)


def ablation_config(cfg: ExperimentConfig, quick: bool = False) -> ExperimentConfig:
    """The default the variants are compared against: the profile's config, with fewer
    epochs under smoke (and 1 per stage in quick mode); the paper profile keeps its own."""
    from aaclip.methods import method_class

    if quick:
        return apply_overrides(cfg, list(QUICK_VARIANT_EPOCHS))
    if cfg.profile == "smoke":
        return apply_overrides(cfg, list(method_class(cfg.method).SMOKE_VARIANT_EPOCHS))
    return cfg


def epochs_text(cfg: ExperimentConfig) -> str:
    """'stage text 2, image 5 epochs' for a config (max_epochs applied)."""
    from aaclip.runs import stage_epochs

    stages = stage_epochs(cfg)
    if not stages:
        return "no training"
    return ", ".join(f"{name} {n}" for name, n in stages) + " epochs"


def ablation_variants(cfg: ExperimentConfig) -> dict[str, list[str]]:
    """One override list per known-defect switch, against the released default ([]).

    The description switch flips whatever the profile uses (paper: official -> plain;
    smoke: plain -> official, which falls back to folder names on the synthetic classes).
    """
    from aaclip.methods import method_class

    return {"default": [], **method_class(cfg.method).ablations(cfg.model)}


@dataclass
class VariantResult:
    """A trained and evaluated ablation variant."""

    name: str
    overrides: list[str]
    cfg: ExperimentConfig
    run_dir: Path
    table: pd.DataFrame
    warnings: list[str] = dataclasses.field(default_factory=list)


def run_variant(
    name: str,
    cfg: ExperimentConfig,
    overrides: list[str],
    run_dir: Path,
    device: str | None = None,
) -> VariantResult:
    """Train (or reuse a finished run) and evaluate one variant; warnings are collected."""
    from aaclip.experiment import run

    vcfg = apply_overrides(cfg, overrides)
    result, messages = _with_warnings(run, vcfg, run_dir, device=device, progress=False)
    return VariantResult(name, overrides, vcfg, Path(run_dir), result.table, messages)


def _with_warnings(fn: Callable[..., T], *args: object, **kwargs: object) -> tuple[T, list[str]]:
    """fn's result and the distinct messages of every warning it raised, in order."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    return result, list(dict.fromkeys(str(w.message) for w in caught))


def ablation_table(
    results: Sequence[VariantResult], default: str = "default"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per variant, per-dataset rows): mean image/pixel AUROC and the change.

    Per variant the value is the unweighted mean over the test sets of each set's mean
    over classes; `*_diff` is variant minus default, in the same units (fractions; the
    markdown shows percentage points).
    """
    cols = ["image_auroc", "pixel_auroc"]
    per_set = []
    for r in results:
        m = mean_rows(r.table, cols)
        m.insert(0, "overrides", " ".join(r.overrides) or "(released default)")
        m.insert(0, "variant", r.name)
        per_set.append(m)
    long = pd.concat(per_set, ignore_index=True)
    wide = long.groupby(["variant", "overrides"], sort=False)[cols].mean().reset_index()
    base = wide.set_index("variant").loc[default, cols]
    for c in cols:
        wide[f"{c}_diff"] = wide[c] - base[c]
        long[f"{c}_diff"] = long[c] - long["dataset"].map(
            long[long.variant == default].set_index("dataset")[c]
        )
    return wide, long


# A variant to run: (row name, base config, overrides, run folder name or None for the name).
Job = tuple[str, ExperimentConfig, list[str], str | None]


def _train_in_worker(cfg: ExperimentConfig, run_dir: str, device: str | None) -> list[str]:
    """Train one run in a fresh process, one thread (the processes share the cores); returns
    the warnings training raised, which the evaluating call reports with its own."""
    import logging

    import torch

    from aaclip.train import train

    logging.getLogger().setLevel(logging.ERROR)  # open_clip logs "random init" at WARNING
    torch.set_num_threads(1)
    return _with_warnings(train, cfg, run_dir, device=device, progress=False)[1]


class VariantRunner:
    """Runs variants in named folders and reuses a result when two variants of a notebook
    have the same config (e.g. the '+ residual image adapter' row of Table 3 and the
    'no_text_adaptation' switch), so nothing trains twice. `aliases`: (config, folder) of
    runs that already exist under another name (the notebook's main run)."""

    def __init__(
        self,
        run_dir: Callable[[str], Path],
        device: str | None = None,
        progress: Callable[[str], None] | None = None,
        aliases: Sequence[tuple[ExperimentConfig, Path]] = (),
    ) -> None:
        self.run_dir = run_dir  # folder name -> path
        self.device = device
        self.progress = progress or (lambda message: None)
        self.aliases = {c.to_json(): Path(p) for c, p in aliases}
        self._done: dict[str, VariantResult] = {}
        self._ahead: dict[str, list[str]] = {}  # config -> warnings of its training ahead

    def __call__(
        self, name: str, cfg: ExperimentConfig, overrides: list[str], folder: str | None = None
    ) -> VariantResult:
        key = apply_overrides(cfg, overrides).to_json()
        if key in self._done:
            return dataclasses.replace(self._done[key], name=name, overrides=overrides)
        where = self.aliases.get(key) or self.run_dir(folder or name)
        self.progress(f"{name}: {' '.join(overrides) or '(default)'} -> {where.name}")
        result = run_variant(name, cfg, overrides, where, self.device)
        if key in self._ahead:  # trained ahead: its training warnings come first, as in turn
            messages = dict.fromkeys(self._ahead.pop(key) + result.warnings)
            result = dataclasses.replace(result, warnings=list(messages))
        self._done[key] = result
        return result

    def train_ahead(self, jobs: Sequence[Job], workers: int = 1) -> None:
        """Train the runs of `jobs` `workers` at a time in fresh processes (one thread each),
        so that the calls which follow only evaluate. Runs that already finished, the aliases
        and repeated configs train once or not at all; with one worker nothing is done here
        (each call trains in turn, as before). A single run left also trains in a one-thread
        process: a variant's numbers then never depend on how many others were finished."""
        from aaclip import runs

        todo: dict[str, tuple[ExperimentConfig, Path]] = {}
        seen: set[str] = set()  # a config is run in the folder of its first job, as __call__ does
        for name, cfg, overrides, folder in jobs:
            vcfg = apply_overrides(cfg, overrides)
            key = vcfg.to_json()
            if key in seen or key in self.aliases or not runs.last_stage(vcfg)[0]:
                continue
            seen.add(key)
            where = self.run_dir(folder or name)
            try:
                runs.final_checkpoint(where, vcfg)
                continue  # finished: the call reuses it
            except FileNotFoundError:
                todo[key] = (vcfg, where)
        if workers <= 1 or not todo:
            return
        n, at_once = len(todo), min(workers, len(todo))
        self.progress(f"training {n} variant{'s' * (n != 1)} ahead, {at_once} at a time")
        spawn = multiprocessing.get_context("spawn")  # no inherited torch state
        with ProcessPoolExecutor(at_once, spawn) as pool:
            futures = {
                key: pool.submit(_train_in_worker, c, str(w), self.device)
                for key, (c, w) in todo.items()
            }
            for key, future in futures.items():
                self._ahead[key] = future.result()  # a failed training raises here


# --------------------------------------------------------------------------- Table 3


def components(method: str) -> dict[str, list[str] | None]:
    """The method's component ablation (its class's `COMPONENT_ABLATION`; {}: none), each
    row a configured variant (cumulative, as in the paper); None: the frozen CLIP row."""
    from aaclip.methods import method_class

    return dict(method_class(method).COMPONENT_ABLATION)


def has_components(method: str) -> bool:
    """Whether notebook 05 runs a component ablation (Table 3) for the method."""
    return bool(components(method))


def run_prefix(method: str) -> str:
    """The prefix of a notebook's variant run folders: none for the default method's
    (`make reproduce`), `<method>-` for any other."""
    return "" if method == REPRODUCE_PARAMETERS["method"] else f"{method}-"


# The rows of the default method's component ablation (the published Table 3 names them).
COMPONENTS = components(REPRODUCE_PARAMETERS["method"])
COMPONENT_SHOTS = 64  # the paper's Table 3 trains on 64-shot VisA


def component_config(cfg: ExperimentConfig, quick: bool = False) -> ExperimentConfig:
    """Table 3's base: the ablation config; under `paper` trained 64-shot as in the paper."""
    base = ablation_config(cfg, quick)
    if cfg.profile != "smoke" and not quick:
        base = apply_overrides(base, [f"train.shots={COMPONENT_SHOTS}"])
    return base


def component_jobs(base: ExperimentConfig, default_folder: str = "ablation_default") -> list[Job]:
    """Every row of Table 3 as a job ('CLIP' is frozen CLIP, no training); the full model's
    run is `default_folder` (shared with the ablations when configs agree)."""
    out: list[Job] = []
    for row, overrides in components(base.method).items():
        if overrides is None:
            out.append((row, switch_method(base, "clip"), [], "clip"))
        else:
            folder = default_folder if not overrides else f"component_{_slug(row)}"
            out.append((row, base, overrides, folder))
    return out


def switch_jobs(base: ExperimentConfig) -> list[Job]:
    """One job per known-defect switch and the default (`ablation_variants`)."""
    return [(n, base, o, f"ablation_{n}") for n, o in ablation_variants(base).items()]


def run_jobs(runner: VariantRunner, jobs: Sequence[Job]) -> list[VariantResult]:
    """Train (unless already trained) and evaluate each job in order."""
    return [runner(name, cfg, overrides, folder=folder) for name, cfg, overrides, folder in jobs]


def run_components(
    runner: VariantRunner, base: ExperimentConfig, default_folder: str = "ablation_default"
) -> list[VariantResult]:
    """Train and evaluate every row of Table 3 (`component_jobs`)."""
    return run_jobs(runner, component_jobs(base, default_folder))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def published_components(published: pd.DataFrame | None = None) -> pd.DataFrame:
    """The published Table 3 rows (percent), from the 'paper Table 3 ablation' entries of
    results/published_results.csv: the full model is the value, the other rows are listed
    in its note ('CLIP 50.3; +linear projector 88.9; ...'). Columns: row, metric, published,
    source, confidence; empty when the file has no such entries."""
    from aaclip.results import load_published

    published = load_published() if published is None else published
    part = published[published.source.str.contains("Table 3", na=False)]
    names = {_slug(k.replace("+", "+ ")): k for k in COMPONENTS}
    rows = []
    for r in part.itertuples():
        values = {"+ disentangle loss": float(r.value)}
        for name, value in re.findall(r"(CLIP|\+\s*[a-z][a-z ]*?)\s+(\d+(?:\.\d+)?)", str(r.note)):
            key = names.get(_slug(name.replace("+", "+ ")))
            if key:
                values[key] = float(value)
        for key, value in values.items():
            rows.append(
                {"row": key, "metric": r.metric, "published": value, "source": r.source,
                 "confidence": r.confidence, "setting": f"{r.train_set} {r.shots}-shot, {r.target}"}
            )  # fmt: skip
    return pd.DataFrame(rows, columns=["row", "metric", "published", "source", "confidence",
                                       "setting"])  # fmt: skip


def component_table(results: Sequence[VariantResult], published: pd.DataFrame) -> pd.DataFrame:
    """Table 3: per row, mean image / pixel AUROC over the test sets, beside the published
    values (percent in the markdown; fractions in the CSV; published as printed, percent)."""
    wide, _ = ablation_table(results, default=results[-1].name)
    wide = wide.rename(columns={"variant": "row"})[["row", "overrides", "image_auroc",
                                                      "pixel_auroc"]]  # fmt: skip
    wide.loc[wide.row == "CLIP", "overrides"] = "method clip (frozen CLIP, no training)"
    wide.loc[wide.row == "+ disentangle loss", "overrides"] = "(the full model: released default)"
    for metric in ("image_auroc", "pixel_auroc"):
        pub = published[published.metric == metric].set_index("row")["published"]
        wide[f"published_{metric}"] = wide.row.map(pub).astype(float) / 100.0
    return wide


COMPONENT_PERCENT = ["image_auroc", "pixel_auroc", "published_image_auroc", "published_pixel_auroc"]


# --------------------------------------------------------------------------- Fig. 4

DATA_EFFICIENCY_SHOTS = {
    "paper": (2, 16, 64, None),  # the paper's Fig. 4; None = full-shot
    "smoke": (2, 8, 32, None),  # the synthetic training classes hold 24 + 24 images
    "quick": (2, 8),  # quick mode trains 8-shot anyway
}


def shots_grid(cfg: ExperimentConfig, quick: bool = False) -> tuple[int | None, ...]:
    if quick:
        return DATA_EFFICIENCY_SHOTS["quick"]
    return DATA_EFFICIENCY_SHOTS["smoke" if cfg.profile == "smoke" else "paper"]


def shot_jobs(base: ExperimentConfig, grid: Sequence[int | None]) -> list[Job]:
    """One job per k of `grid` on the ablation config (None: every training image)."""
    out: list[Job] = []
    for k in grid:
        label = "full" if k is None else str(k)
        if k == base.train.shots:
            out.append((label, base, [], "ablation_default"))
        else:
            value = "null" if k is None else k
            out.append((label, base, [f"train.shots={value}"], f"shots_{label}"))
    return out


def run_shots(
    runner: VariantRunner, base: ExperimentConfig, grid: Sequence[int | None]
) -> list[VariantResult]:
    """Train and evaluate one run per k of `grid` (`shot_jobs`)."""
    return run_jobs(runner, shot_jobs(base, grid))


def shots_table(results: Sequence[VariantResult]) -> pd.DataFrame:
    """Per k and test set (and their mean): image and pixel AUROC."""
    parts = []
    for r in results:
        m = mean_rows(r.table, ["image_auroc", "pixel_auroc"])
        m = pd.concat(
            [m, pd.DataFrame([{"dataset": "mean", **m[["image_auroc", "pixel_auroc"]].mean()}])],
            ignore_index=True,
        )
        m.insert(0, "shots", r.name)
        m.insert(1, "train_images", _n_train_images(r.cfg))
        parts.append(m)
    return pd.concat(parts, ignore_index=True)


def _n_train_images(cfg: ExperimentConfig) -> int:
    from aaclip import data

    records = data.read_records(cfg.data.train_records)
    if cfg.train.shots:
        records = data.sample_few_shot(records, cfg.train.shots, cfg.train.seed)
    return len(records)
