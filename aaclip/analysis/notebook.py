"""A notebook's set-up: its config from the parameters cell, where outputs go, and the notes
every table and figure carries (smoke banner, quick mode, where settings differ from the
paper's), plus the key-number summary each notebook ends with."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from aaclip import backbone as bb
from aaclip import data, runtime
from aaclip.config import ExperimentConfig, apply_overrides, preset
from aaclip.evaluate import eval_sets
from aaclip.results import format_number, reported, write_table

SMOKE_BANNER = (
    "SMOKE PROFILE — tiny random CLIP on synthetic data; proves the pipeline, not the paper"
)
QUICK_BANNER = "QUICK MODE — fewer epochs, 8-shot training, 8 test images per class (test run)"
# Quick mode (tests, nbval): 2 + 2 epochs on 8 images per training class, and each test
# class cut to its first QUICK_TEST_IMAGES normal and as many anomalous images.
QUICK_OVERRIDES = ("train.max_epochs=2", "train.shots=8")
QUICK_TEST_IMAGES = 4
METRICS_SHOWN = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "pixel_aupro")
ROOT_ENV = "AACLIP_ROOT"  # where relative notebook paths resolve (tests: a scratch folder)
QUICK_ENV = "AACLIP_QUICK"  # "1": the parameters cell defaults to quick mode (nbval)
PROGRESS = "▸"  # prefix of the progress lines `make reproduce` shows on the terminal
# Settings that do not change numbers, or that differ between machines only.
_NOT_COMPARED = (
    "data.train_records", "data.test_records", "data.test_domains", "data.memory_records",
    "backbone.weights", "backbone.require_weights", "backbone.precision", "eval.batch_size",
    "eval.num_workers", "train.num_workers", "profile",
)  # fmt: skip


class MissingInputsError(SystemExit):
    """Inputs of a profile are absent. A SystemExit, so a notebook or script stops with
    this one message and no traceback."""


# --------------------------------------------------------------------------- paths


def repo_root(start: str | Path | None = None) -> Path:
    """Where relative paths resolve: $AACLIP_ROOT if set, else the first folder at or above
    `start` (default: cwd) with pyproject.toml, else the folder above the package."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).expanduser().resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return Path(__file__).resolve().parent.parent.parent


def resolve_path(path: str | Path, root: Path) -> Path:
    """`path` resolved (symlinks followed), relative to the project root unless absolute."""
    p = Path(path).expanduser()
    return (p if p.is_absolute() else root / p).resolve()


# --------------------------------------------------------------------------- configs


def profile_config(
    profile: str, data_root: str | Path, root: Path, method: str = "aaclip"
) -> ExperimentConfig:
    """A method's preset of a profile with every dataset path made absolute against the root.

    `smoke` reads the embedded dataset at `data_root`; `paper` reads `<data_root>/<Name>/
    test.jsonl` for each dataset (the notebooks' default `data/synthetic` means `data`).
    """
    if profile == "smoke":
        cfg = preset("smoke", method, data_root=str(resolve_path(data_root, root)))
    else:
        base = "data" if Path(data_root) == Path("data/synthetic") else data_root
        cfg = preset(profile, method, data_root=str(resolve_path(base, root)))
    return absolute_data(cfg, root)


def absolute_data(cfg: ExperimentConfig, root: Path) -> ExperimentConfig:
    """The config with its records files (and memory files, if any) absolute."""
    d = cfg.data
    overrides = [
        f"data.train_records={resolve_path(d.train_records, root)}" if d.train_records else "",
        f"data.test_records={json.dumps([str(resolve_path(p, root)) for p in d.test_records])}",
    ]
    memory = getattr(d, "memory_records", ())
    if memory:
        files = [str(resolve_path(p, root)) if p else "" for p in memory]
        overrides.append(f"data.memory_records={json.dumps(files)}")
    return apply_overrides(cfg, [o for o in overrides if o])


def select_targets(cfg: ExperimentConfig, targets: Sequence[str] | None) -> ExperimentConfig:
    """Only the named test sets (None: all of them); an unknown name stops with the known ones."""
    if not targets:
        return cfg
    known = list(cfg.data.test_datasets)
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise MissingInputsError(
            f"targets {unknown} are not test sets of profile {cfg.profile!r}; choose from {known}"
        )
    keep = [known.index(t) for t in targets]
    d = cfg.data
    pick = lambda values: json.dumps([values[i] for i in keep]) if values else "[]"  # noqa: E731
    overrides = [
        f"data.test_records={pick(list(d.test_records))}",
        f"data.test_datasets={pick(known)}",
        f"data.test_domains={pick(list(d.test_domains))}",
    ]
    if getattr(d, "memory_records", ()):
        overrides.append(f"data.memory_records={pick(list(d.memory_records))}")
    return apply_overrides(cfg, overrides)


def require_inputs(cfg: ExperimentConfig) -> None:
    """Stop with ONE message naming every missing records file and backbone weights file.

    Tiny registered backbones are random by design; any other backbone needs weights from
    `backbone.weights` or $AACLIP_WEIGHTS (nothing is ever downloaded).
    """
    missing = [
        f"records file {p}"
        for p in (cfg.data.train_records, *cfg.data.test_records)
        if p and not Path(p).is_file()
    ]
    b = cfg.backbone
    if b.name not in bb.tiny_model_names():
        weights = b.weights or os.environ.get(bb.WEIGHTS_ENV)
        if not weights:
            missing.append(
                f"weights of {b.name}: set {bb.WEIGHTS_ENV}=/path/to/weights "
                "(OpenAI .pt, open_clip .bin/.pth or .safetensors) or backbone.weights"
            )
        elif not Path(weights).expanduser().is_file():
            missing.append(
                f"weights of {b.name}: no file at {weights} "
                f"(from {'backbone.weights' if b.weights else bb.WEIGHTS_ENV})"
            )
    if missing:
        raise MissingInputsError(
            f"profile {cfg.profile!r} cannot run, missing: "
            + "; ".join(missing)
            + ". Convert the raw datasets with `aaclip prepare <dataset>` and point at local "
            "weights; nothing is downloaded."
        )


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


def paper_differences(cfg: ExperimentConfig) -> list[tuple[str, Any, Any]]:
    """(setting, value here, value in the method's `paper` preset) for every setting that
    changes numbers and differs; datasets are compared by name, not path."""
    try:
        paper = preset("paper", cfg.method)
    except ValueError:
        return [("profile", cfg.profile, "(no paper preset for this method)")]
    ours, theirs = _flat(cfg.to_dict()), _flat(paper.to_dict())
    rows = []
    for key, value in ours.items():
        if key in _NOT_COMPARED or key.startswith(_NOT_COMPARED):
            continue
        if theirs.get(key, value) != value:
            rows.append((key, value, theirs.get(key)))
    return rows


_NONE = {"train.shots": "full", "train.max_epochs": "as scheduled", "eval.epoch": "last"}


def _short(key: str, v: Any) -> str:
    if isinstance(v, tuple | list):
        return "[" + ", ".join(map(str, v)) + "]" if len(v) <= 4 else f"[{len(v)} items]"
    return _NONE.get(key, "none") if v is None else str(v)


def differences_text(cfg: ExperimentConfig, extra: Iterable[str] = ()) -> str:
    """'Differs from the paper: a=1 (paper: 2); …' or '' when nothing differs."""
    parts = [f"{k}={_short(k, v)} (paper: {_short(k, p)})" for k, v, p in paper_differences(cfg)]
    parts += list(extra)
    return ("Differs from the paper: " + "; ".join(parts)) if parts else ""


# --------------------------------------------------------------------------- the notebook


@dataclass
class Notebook:
    """One notebook's configuration and output locations."""

    name: str
    profile: str
    cfg: ExperimentConfig
    root: Path
    results_dir: Path
    runs_dir: Path
    device: str | None = None
    quick: bool = False
    seeds: list[int] = field(default_factory=lambda: [111])
    method: str = "aaclip"
    shots: int | None = None
    epochs: int | None = None
    outputs: list[dict[str, str]] = field(default_factory=list)  # for results/REPORT.md

    @property
    def smoke(self) -> bool:
        return self.cfg.profile == "smoke"

    @property
    def banner(self) -> str:
        """Smoke / quick banners (empty for a full paper run)."""
        parts = [SMOKE_BANNER] if self.smoke else []
        if self.quick:
            parts.append(QUICK_BANNER)
        return ". ".join(parts)

    @property
    def note(self) -> str:
        """The note of this notebook's tables: banners and differences from the paper."""
        return self.note_for(self.cfg)

    def note_for(self, cfg: ExperimentConfig | None, extra: Iterable[str] = ()) -> str:
        """Banners plus where `cfg` (None: no config, e.g. a metric demo) differs from the
        paper, plus `extra` differences of this table."""
        extra = [e for e in extra if e]
        diff = differences_text(cfg, extra) if cfg is not None else "; ".join(extra)
        return "\n> ".join(p for p in (self.banner, diff) if p)

    def title(self, text: str) -> str:
        """A figure title; under smoke (or quick) the banner is added on its own line."""
        return f"{text}\n{self.banner}" if self.banner else text

    def config(self, method: str | None = None, seed: int | None = None) -> ExperimentConfig:
        """The notebook's experiment for `method` (default: the notebook's): its own preset
        of the profile, on the notebook's data, shots, epochs, quick mode and `seed`."""
        method = method or self.method
        cfg = self.cfg if method == self.cfg.method else _method_config(self, method)
        if seed is not None and seed != cfg.train.seed:
            cfg = apply_overrides(cfg, [f"train.seed={seed}"])
        return cfg

    def run_name(self, base: str, cfg: ExperimentConfig | None = None) -> str:
        """`base` plus a suffix for every notebook setting that differs from the profile's
        preset (shots, epochs, seed), so different settings never share a run folder."""
        cfg = cfg or self.cfg
        default = preset(self.profile, cfg.method)
        parts = [base]
        if cfg.train.shots != (8 if self.quick else default.train.shots):
            parts.append(f"shots{cfg.train.shots or 'full'}")
        if cfg.train.max_epochs != (2 if self.quick else default.train.max_epochs):
            parts.append(f"epochs{cfg.train.max_epochs}")
        if cfg.train.seed != default.train.seed:
            parts.append(f"seed{cfg.train.seed}")
        return "-".join(parts)

    def run_dir(self, name: str) -> Path:
        """`{runs_dir}/{profile}/{name}`; quick runs live in `{profile}-quick` (other config)."""
        return self.runs_dir / (f"{self.profile}-quick" if self.quick else self.profile) / name

    def figure_path(self, name: str) -> Path:
        return self.results_dir / "figures" / f"{self.name}_{name}.png"

    def table_stem(self, name: str) -> Path:
        return self.results_dir / "tables" / f"{self.name}_{name}"

    def describe(self, path: Path, what: str, paper: str = "") -> None:
        """Record one line on what an output shows (and the paper figure/table it is), for
        results/REPORT.md; the latest line of a path wins."""
        rel = self.rel(path)
        self.outputs = [o for o in self.outputs if o["path"] != rel]
        self.outputs.append({"path": rel, "what": what, "paper": paper})

    def save_figure(
        self,
        fig: Figure,
        name: str,
        cfg: ExperimentConfig | None | bool = True,
        extra: Iterable[str] = (),
        what: str = "",
        paper: str = "",
    ) -> Path:
        """Save as PNG (no software/date metadata, so reruns give the same bytes). A footer
        names where the settings of `cfg` (True: the notebook's; None: none) differ from the
        paper's, plus `extra`. `what` (one line) and `paper` go to results/REPORT.md."""
        cfg = self.cfg if cfg is True else cfg
        extra = [e for e in extra if e]
        diff = differences_text(cfg, extra) if cfg else "; ".join(extra)
        if diff:
            footer(fig, diff)
        path = self.figure_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
        path.write_bytes(buf.getvalue())
        self.describe(path, what, paper)
        return path

    def write_table(
        self,
        df: pd.DataFrame,
        name: str,
        cfg: ExperimentConfig | None | bool = True,
        extra: Iterable[str] = (),
        percent: Sequence[str] | None = None,
        digits: int = 2,
        what: str = "",
        paper: str = "",
    ) -> Path:
        """CSV + markdown (with the note for `cfg`); returns the markdown path. `what` (one
        line) and `paper` go to results/REPORT.md."""
        cfg = self.cfg if cfg is True else cfg
        stem = self.table_stem(name)
        write_table(df, stem, note=self.note_for(cfg, extra), digits=digits, percent=percent)
        self.describe(stem.with_suffix(".md"), what, paper)
        return stem.with_suffix(".md")

    def rel(self, path: Path) -> str:
        """A path as written into summaries: relative to the results folder when inside it."""
        try:
            return str(Path(path).relative_to(self.results_dir))
        except ValueError:
            return str(path)

    def progress(self, message: str) -> None:
        """One progress line (`make reproduce` shows these on the terminal)."""
        print(f"{PROGRESS} {self.name[:2]} {message}", flush=True)

    def write_summary(self, numbers: dict[str, Any], key_numbers: dict[str, str]) -> Path:
        """`{results_dir}/summaries/<notebook>.json`: the numbers the tests assert (NaN ->
        null) and `key_numbers`, the readable lines `make reproduce` prints."""
        path = self.results_dir / "summaries" / f"{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "notebook": self.name,
            "profile": self.profile,
            "quick": self.quick,
            "key_numbers": key_numbers,
            "outputs": self.outputs,
            **numbers,
        }
        path.write_text(json.dumps(jsonable(doc), indent=2, sort_keys=False) + "\n")
        return path


def footer(fig: Figure, text: str) -> None:
    """`text` in small grey print below everything already drawn (legends and tick labels
    outside the axes included), so it never overlaps them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if fig.canvas is None or not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    box = fig.get_tightbbox(renderer)  # inches
    width, height = fig.get_figwidth(), fig.get_figheight()
    wrapped = textwrap.fill(text, width=max(60, int(box.width * 16)))
    fig.text(
        box.x0 / width, box.y0 / height - 0.02, wrapped, ha="left", va="top",
        fontsize=6.5, color="0.35",
    )  # fmt: skip
    if fig.get_layout_engine() is not None:
        fig.set_layout_engine("none")  # keep the axes where they were drawn


def _method_config(nb: Notebook, method: str) -> ExperimentConfig:
    """Another method's preset of the notebook's profile (model, schedule, backbone) on the
    notebook's records (its `data` section), with its shots / epochs / seed / quick mode."""
    cfg = profile_config(nb.profile, _data_root_of(nb.cfg), nb.root, method)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(nb.cfg.data))
    return apply_overrides(cfg, _run_overrides(nb.shots, nb.epochs, nb.quick, nb.seeds[0]))


def _data_root_of(cfg: ExperimentConfig) -> str:
    """The data root a resolved config was made from (the folder above the records)."""
    first = Path(cfg.data.test_records[0])
    return str(first.parent if cfg.profile == "smoke" else first.parent.parent)


def quick_test_records(cfg: ExperimentConfig) -> ExperimentConfig:
    """Quick mode: each test set cut to the first QUICK_TEST_IMAGES normal and anomalous
    images per class, written beside the original (`<name>.quick.jsonl`, same paths)."""
    files = []
    for path in map(Path, cfg.data.test_records):
        if path.name.endswith(".quick.jsonl"):
            files.append(str(path))
            continue
        records = data.read_records(path)
        kept, count = [], {}
        for r in records:
            key = (r.class_name, r.label)
            if count.get(key, 0) < QUICK_TEST_IMAGES:
                kept.append(r)
                count[key] = count.get(key, 0) + 1
        out = path.with_name(path.name.removesuffix(".jsonl") + ".quick.jsonl")
        text = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in kept)
        if not (out.is_file() and out.read_text() == text):
            data.write_records(out, kept)
        files.append(str(out))
    return apply_overrides(cfg, [f"data.test_records={json.dumps(files)}"])


def _run_overrides(shots: int | None, epochs: int | None, quick: bool, seed: int) -> list[str]:
    out = [f"train.seed={seed}"]
    if shots is not None:
        out.append(f"train.shots={shots}")
    if epochs is not None:
        out.append(f"train.max_epochs={epochs}")
    if quick:
        out += list(QUICK_OVERRIDES)
    return out


def jsonable(x: Any) -> Any:
    """Plain JSON types: numpy/torch scalars as numbers (to the reported digits), NaN as
    None, paths as strings."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, pd.DataFrame):
        return jsonable(x.to_dict(orient="records"))
    if isinstance(x, torch.Tensor | np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else reported(x)
    if isinstance(x, Path):
        return str(x)
    return x


# The parameters `make reproduce` runs the notebooks with (besides profile and folders): only
# such a run writes the tracked results/ (and REPORT.md); any other goes to an untracked
# folder under results/_scratch/ unless `results_dir` is given.
REPRODUCE_PARAMETERS: dict[str, Any] = {
    "method": "aaclip",
    "methods": None,
    "targets": None,
    "shots": None,
    "epochs": None,
    "seeds": [111],
    "quick": False,
}


def exploration_name(**parameters: Any) -> str | None:
    """A folder name for notebook parameters other than `REPRODUCE_PARAMETERS`' (e.g.
    `method-dpclip_shots-8`), None for the default run."""
    import re

    parts = []
    for key, value in parameters.items():
        if value == REPRODUCE_PARAMETERS.get(key, value):
            continue
        if value is True:
            parts.append(key)
            continue
        shown = "+".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        parts.append(f"{key}-{re.sub(r'[^A-Za-z0-9.+-]', '', shown)}")
    return "_".join(parts) or None


def results_folder(results_dir: str | Path | None, **parameters: Any) -> Path:
    """Where a notebook writes: `results_dir` when given; else `results` for the default
    run and `results/_scratch/<parameters>` for any other (never the tracked tables)."""
    from aaclip.results import SCRATCH

    if results_dir is not None:
        return Path(results_dir)
    name = exploration_name(**parameters)
    return SCRATCH / name if name else Path("results")


def setup(
    name: str,
    profile: str = "smoke",
    data_root: str | Path = "data/synthetic",
    results_dir: str | Path | None = None,
    runs_dir: str | Path = "runs",
    device: str | None = None,
    quick: bool = False,
    targets: Sequence[str] | None = None,
    shots: int | None = None,
    epochs: int | None = None,
    seeds: Sequence[int] | None = None,
    method: str = "aaclip",
    methods: Sequence[str] | None = None,
) -> Notebook:
    """Config and paths of a notebook; stops with one message when inputs are missing.

    `results_dir` None: `results/` for `make reproduce`'s parameters, else an untracked
    `results/_scratch/<parameters>/` (`results_folder`), so exploring never overwrites the
    tracked tables; name a folder (e.g. "results") to write there. `methods`: notebook 07's
    choice of methods (only where it goes).

    Paths are relative to the repo root (found from the working directory, or
    $AACLIP_ROOT), so a notebook runs the same from the root (papermill --cwd .) and from
    notebooks/ (interactive). $AACLIP_QUICK=1 turns quick mode on (nbval runs the committed
    notebooks that way). Under `smoke` the embedded dataset is built if it is missing
    or older than the builder (seconds, no download).
    """
    root = repo_root()
    runtime.use_thread_policy()  # as the CLI: one thread for the tiny backbones
    quick = quick or os.environ.get(QUICK_ENV) == "1"
    seeds = list(seeds) if seeds else [111]
    asked = dict(
        method=method, methods=list(methods) if methods else None,
        targets=list(targets) if targets else None, shots=shots, epochs=epochs, seeds=seeds,
        quick=quick,
    )  # fmt: skip
    results_dir = results_folder(results_dir, **asked)
    if results_dir.parts[:2] == ("results", "_scratch"):
        print(
            f"outputs go to {results_dir}/ (untracked): parameters other than `make "
            'reproduce`\'s; results_dir="results" writes the tracked tables'
        )
    cfg = profile_config(profile, data_root, root, method)
    cfg = select_targets(cfg, targets)
    cfg = apply_overrides(cfg, _run_overrides(shots, epochs, quick, seeds[0]))
    if profile == "smoke":
        ensure_synthetic(Path(resolve_path(data_root, root)))
    require_inputs(cfg)
    if quick:
        cfg = quick_test_records(cfg)
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    return Notebook(
        name=name,
        profile=profile,
        cfg=cfg,
        root=root,
        results_dir=resolve_path(results_dir, root),
        runs_dir=resolve_path(runs_dir, root),
        device=device,
        quick=quick,
        seeds=seeds,
        method=method,
        shots=shots,
        epochs=epochs,
    )


def ensure_synthetic(folder: Path, verbose: bool = True) -> bool:
    """Build the embedded dataset into `folder` when it is missing or was built by an older
    builder (its `format_version`); True when it was built now."""
    from data_prep import synthetic

    info = folder / "dataset.json"
    if info.is_file():
        version = json.loads(info.read_text()).get("format_version")
        if version == synthetic.FORMAT_VERSION:
            return False
    if verbose:
        print(f"building the embedded synthetic dataset into {folder}")
    synthetic.build(folder, seed=0)
    return True


# --------------------------------------------------------------------------- test sets


def class_groups(cfg: ExperimentConfig) -> list[tuple[str, str | None, list[str]]]:
    """(split, dataset, class names): the training classes, then each test set's classes."""
    train = data.class_names(data.read_records(cfg.data.train_records))
    groups = [("train", cfg.data.train_dataset, train)]
    for ts in eval_sets(cfg):
        groups.append((f"test: {ts.dataset}", ts.dataset, data.class_names(ts.records())))
    return groups


# --------------------------------------------------------------------------- tables


def with_method(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Stack evaluation tables of several methods with a leading `method` column."""
    parts = []
    for method, df in tables.items():
        df = df.copy()
        df.insert(0, "method", method)
        parts.append(df)
    return pd.concat(parts, ignore_index=True)


def mean_rows(table: pd.DataFrame, columns: Sequence[str] = METRICS_SHOWN) -> pd.DataFrame:
    """The per-dataset 'mean' rows of an evaluation table, key metrics only."""
    keys = [c for c in ("method", "seed", "dataset") if c in table]
    means = table[table["class_name"] == "mean"]
    return means[[*keys, *[c for c in columns if c in means]]].reset_index(drop=True)


def shots_label(cfg: ExperimentConfig) -> str:
    """'full' or the k of k-shot training, as in published_results.csv."""
    return "full" if cfg.train.shots is None else str(cfg.train.shots)


def read_train_log(run_dir: str | Path) -> pd.DataFrame:
    """train_log.jsonl as a table: stage, epoch, loss (mean over the epoch's steps)."""
    from aaclip.runs import read_log

    df = pd.DataFrame(read_log(run_dir), columns=["stage", "epoch", "loss", "time"])
    return df[["stage", "epoch", "loss"]]


# --------------------------------------------------------------------------- key numbers


def pct(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage string ('–' when missing, never '-0.0')."""
    return format_number(float("nan") if x is None else x, digits, 100.0)


def num(x: float | None, digits: int = 3) -> str:
    """A number with `digits` decimals ('–' when missing, never '-0.000')."""
    return format_number(float("nan") if x is None else x, digits)


def key_numbers_text(name: str, profile: str, quick: bool, key_numbers: dict[str, str]) -> str:
    """The readable key-number block a notebook prints last and `make reproduce` repeats."""
    mode = f"{profile}, quick" if quick else profile
    width = max((len(k) for k in key_numbers), default=0) + 2
    lines = [f"{name} — key numbers ({mode})"]
    lines += [f"  {k + ' ':.<{width}} {v}" for k, v in key_numbers.items()]
    return "\n".join(lines)


def print_key_numbers(nb: Notebook, key_numbers: dict[str, str]) -> None:
    print(key_numbers_text(nb.name, nb.profile, nb.quick, key_numbers))
