"""Analysis and plotting helpers for the notebooks.

The notebooks hold the story; the logic they need lives here, written once. Nothing in
this module imports a notebook, and nothing here trains or scores differently from the
package: training is `aaclip.train`, scoring `aaclip.evaluate`, metrics `aaclip.metrics`.

Contents, in notebook order:
- set-up: `repo_root`, `setup` (config of a profile, paths, `require_inputs`), `Notebook`
  (where figures, tables, run folders and the summary JSON go), `eval_sets`;
- 01: `anchor_cosines`, `patch_score_samples`, `score_separation`;
- 02/03: `read_train_log`, `plot_loss`, `initial_model`, `anchor_comparison`,
  `predict_test_sets`, `qualitative_grid`;
- 04: `with_method`, `mean_rows`, `shots_label`;
- 05: `ablation_config`, `ablation_variants`, `run_variant`, `ablation_table`;
- 06: `pro_curve` and two clearly-labelled WRONG AUPRO variants kept only as references
  (`aupro_wrong_last_fpr`, `aupro_wrong_200_thresholds`), `adversarial_aupro_case`,
  `only_anomalous`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from aaclip import backbone as bb
from aaclip import data, losses, metrics, scoring
from aaclip.config import ExperimentConfig, apply_overrides, preset
from aaclip.evaluate import EvalSet, eval_sets
from aaclip.results import write_table

SMOKE_BANNER = (
    "SMOKE PROFILE — tiny random CLIP on synthetic data; proves the pipeline, not the paper"
)
QUICK_BANNER = "QUICK MODE — fewer epochs and 8-shot training (test run)"
# Quick mode (tests): 2 + 2 epochs on 8 images per training class.
QUICK_OVERRIDES = ("train.max_epochs=2", "train.shots=8")
METRICS_SHOWN = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "pixel_aupro")


class MissingInputsError(SystemExit):
    """Inputs of a profile are absent. A SystemExit, so a notebook or script stops with
    this one message and no traceback."""


# --------------------------------------------------------------------------- set-up


def repo_root(start: str | Path | None = None) -> Path:
    """The project root: the first folder at or above `start` (default: cwd) with pyproject.toml."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    # installed package without a checkout: fall back to the folder above aaclip/
    return Path(__file__).resolve().parent.parent


def resolve_path(path: str | Path, root: Path) -> Path:
    """`path` as is when absolute, else relative to the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root / p).resolve()


def profile_config(profile: str, data_root: str | Path, root: Path) -> ExperimentConfig:
    """The preset of a profile with every dataset path made absolute against the repo root.

    `smoke` reads the embedded dataset at `data_root`; `paper` reads `<data_root>/<Name>/
    test.jsonl` for each dataset (the notebooks' default `data/synthetic` means `data`).
    """
    if profile == "smoke":
        cfg = preset("smoke", data_root=str(resolve_path(data_root, root)))
    else:
        base = "data" if Path(data_root) == Path("data/synthetic") else data_root
        cfg = preset(profile, data_root=str(resolve_path(base, root)))
    d = cfg.data
    tests = [str(resolve_path(p, root)) for p in d.test_records]
    return apply_overrides(
        cfg,
        [
            f"data.train_records={resolve_path(d.train_records, root)}",
            f"data.test_records={json.dumps(tests)}",
        ],
    )


def require_inputs(cfg: ExperimentConfig) -> None:
    """Stop with ONE message naming every missing records file and backbone weights file.

    Tiny registered backbones are random by design; any other backbone needs weights from
    `backbone.weights` or $AACLIP_WEIGHTS (nothing is ever downloaded).
    """
    missing = [
        f"records file {p}"
        for p in (cfg.data.train_records, *cfg.data.test_records)
        if not Path(p).is_file()
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

    @property
    def smoke(self) -> bool:
        return self.cfg.profile == "smoke"

    @property
    def note(self) -> str:
        """The note every table of this notebook carries (empty for a full paper run)."""
        parts = [SMOKE_BANNER] if self.smoke else []
        if self.quick:
            parts.append(QUICK_BANNER)
        return ". ".join(parts)

    def title(self, text: str) -> str:
        """A figure title; under smoke (or quick) the banner is added on its own line."""
        return f"{text}\n{self.note}" if self.note else text

    def run_dir(self, name: str) -> Path:
        """`{runs_dir}/{profile}/{name}`; quick runs live in `{profile}-quick` (other config)."""
        return self.runs_dir / (f"{self.profile}-quick" if self.quick else self.profile) / name

    def figure_path(self, name: str) -> Path:
        return self.results_dir / "figures" / f"{self.name}_{name}.png"

    def table_stem(self, name: str) -> Path:
        return self.results_dir / "tables" / f"{self.name}_{name}"

    def save_figure(self, fig: Figure, name: str) -> Path:
        """Save as PNG (no software/date metadata, so reruns give the same bytes)."""
        path = self.figure_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
        path.write_bytes(buf.getvalue())
        return path

    def write_table(self, df: pd.DataFrame, name: str) -> Path:
        """CSV + markdown (with this notebook's note); returns the markdown path."""
        stem = self.table_stem(name)
        write_table(df, stem, note=self.note)
        return stem.with_suffix(".md")

    def rel(self, path: Path) -> str:
        """A path as written into summaries: relative to the results folder when inside it."""
        try:
            return str(Path(path).relative_to(self.results_dir))
        except ValueError:
            return str(path)

    def write_summary(self, numbers: dict[str, Any]) -> Path:
        """`{results_dir}/summaries/<notebook>.json` with the key numbers (NaN -> null)."""
        path = self.results_dir / "summaries" / f"{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"notebook": self.name, "profile": self.profile, "quick": self.quick, **numbers}
        path.write_text(json.dumps(jsonable(doc), indent=2, sort_keys=False) + "\n")
        return path


def jsonable(x: Any) -> Any:
    """Plain JSON types: numpy/torch scalars as numbers, NaN as None, paths as strings."""
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
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, Path):
        return str(x)
    return x


def setup(
    name: str,
    profile: str = "smoke",
    data_root: str | Path = "data/synthetic",
    results_dir: str | Path = "results",
    runs_dir: str | Path = "runs",
    device: str | None = None,
    quick: bool = False,
) -> Notebook:
    """Config and paths of a notebook; stops with one message when inputs are missing.

    Paths are relative to the repo root (found from the working directory), so a notebook
    runs the same from the root (papermill --cwd .) and from notebooks/ (interactive).
    Under `smoke` the embedded dataset is built if it is not there yet (seconds, no
    download).
    """
    root = repo_root()
    cfg = profile_config(profile, data_root, root)
    if quick:
        cfg = apply_overrides(cfg, list(QUICK_OVERRIDES))
    if profile == "smoke" and not Path(cfg.data.train_records).is_file():
        from data_prep.synthetic import build  # the embedded dataset, built from local files

        out = Path(cfg.data.train_records).parent
        print(f"building the embedded synthetic dataset into {out}")
        build(out, seed=0)
    require_inputs(cfg)
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
    )


# --------------------------------------------------------------------------- test sets


def class_groups(cfg: ExperimentConfig) -> list[tuple[str, str | None, list[str]]]:
    """(split, dataset, class names): the training classes, then each test set's classes."""
    train = data.class_names(data.read_records(cfg.data.train_records))
    groups = [("train", cfg.data.train_dataset, train)]
    for ts in eval_sets(cfg):
        groups.append((f"test: {ts.dataset}", ts.dataset, data.class_names(ts.records())))
    return groups


# --------------------------------------------------------------------------- 01: unawareness


@torch.no_grad()
def anchor_cosines(
    model: torch.nn.Module, class_names: Iterable[str], dataset: str | None, adapted: bool
) -> dict[str, float]:
    """cos(t_normal, t_abnormal) per class: the anchors are unit vectors, so a dot product."""
    anchors = _anchors(model, list(class_names), dataset, adapted)
    return {name: float(a[:, 0] @ a[:, 1]) for name, a in anchors.items()}


def _anchors(
    model: torch.nn.Module, names: list[str], dataset: str | None, adapted: bool
) -> dict[str, torch.Tensor]:
    """Anchors per class: AA-CLIP's adapted or frozen text, else the method's own anchors."""
    if hasattr(model, "anchors_for"):  # AA-CLIP: either text encoder on request
        return model.anchors_for(names, dataset, adapted=adapted)
    return {n: model.class_anchors(n, dataset) for n in dict.fromkeys(names)}


def patch_scores(
    model: torch.nn.Module, images: torch.Tensor, anchors: torch.Tensor
) -> torch.Tensor:
    """f·(t_a − t_n) of the last level's patch features on the patch grid: (B, g, g)."""
    seg, _ = model.encode_image(images)
    logits = scoring.patch_logits(seg[-1].float(), anchors.float())
    return (logits[:, 1] - logits[:, 0]) / scoring.LOGIT_SCALE


@torch.no_grad()
def patch_score_samples(
    model: torch.nn.Module,
    cfg: ExperimentConfig,
    device: torch.device,
    per_image: int = 64,
    seed: int = 0,
    adapted: bool = False,
) -> pd.DataFrame:
    """Raw patch scores f·(t_a − t_n) at pixels of every test image, normal vs anomalous.

    Scores are computed on the patch grid and upsampled bilinearly to the evaluation size
    (no blur, no per-class normalisation: the raw text-image alignment). From each image up
    to `per_image` normal pixels and `per_image` anomalous pixels are drawn (seeded).
    Returns columns dataset, class_name, pixel ('normal' | 'anomalous'), score.
    """
    gen = torch.Generator().manual_seed(seed)
    size = cfg.backbone.image_size
    frames = []
    for ts in eval_sets(cfg):
        records = ts.records()
        for cls in data.class_names(records):
            subset = [r for r in records if r.class_name == cls]
            anchors = _anchors(model, [cls], ts.dataset, adapted)[cls].float()
            loader = torch.utils.data.DataLoader(
                data.RecordDataset(subset, ts.root, size), batch_size=cfg.eval.batch_size
            )
            picked: dict[str, list[torch.Tensor]] = {"normal": [], "anomalous": []}
            for batch in loader:
                s = patch_scores(model, batch["image"].to(device), anchors)
                s = scoring.upsample(s.unsqueeze(1), size)[:, 0].cpu()
                masks = batch["mask"][:, 0] > 0.5
                for img_scores, mask in zip(s, masks, strict=True):
                    for label, where in (("normal", ~mask), ("anomalous", mask)):
                        values = img_scores[where]
                        if len(values) > per_image:
                            idx = torch.randperm(len(values), generator=gen)[:per_image]
                            values = values[idx]
                        picked[label].append(values)
            for label, parts in picked.items():
                values = torch.cat(parts).numpy() if parts else np.zeros(0, np.float32)
                frames.append(
                    pd.DataFrame(
                        {"dataset": ts.dataset, "class_name": cls, "pixel": label, "score": values}
                    )
                )
    return pd.concat(frames, ignore_index=True)


def overlap_coefficient(a: np.ndarray, b: np.ndarray, bins: int = 50) -> float:
    """Shared area of the two normalised histograms (1 = identical, 0 = disjoint)."""
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    if hi <= lo:
        return 1.0
    edges = np.linspace(lo, hi, bins + 1)
    pa = np.histogram(a, edges)[0] / len(a)
    pb = np.histogram(b, edges)[0] / len(b)
    return float(np.minimum(pa, pb).sum())


def score_separation(samples: pd.DataFrame) -> pd.DataFrame:
    """Per class: mean raw score of normal / anomalous pixels, their AUROC and overlap."""
    rows = []
    for (dataset, cls), g in samples.groupby(["dataset", "class_name"], sort=False):
        normal = g.loc[g.pixel == "normal", "score"].to_numpy()
        anomalous = g.loc[g.pixel == "anomalous", "score"].to_numpy()
        labels = np.r_[np.zeros(len(normal), bool), np.ones(len(anomalous), bool)]
        rows.append(
            {
                "dataset": dataset,
                "class_name": cls,
                "score_normal_mean": float(normal.mean()) if len(normal) else float("nan"),
                "score_anomalous_mean": float(anomalous.mean()) if len(anomalous) else math.nan,
                "score_auroc_sampled": metrics.auroc(np.r_[normal, anomalous], labels),
                "score_overlap": overlap_coefficient(normal, anomalous),
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- 02/03: training


def legend_below(ax: Any, ncol: int = 3, offset: float = -0.3) -> None:
    """Move a seaborn legend under the axes, so it never covers bars."""
    import seaborn as sns

    sns.move_legend(
        ax, "upper center", bbox_to_anchor=(0.5, offset), ncol=ncol, frameon=False, title=None
    )


def plot_loss(ax: Any, log: pd.DataFrame, stage: int, title: str) -> None:
    """Mean training loss per epoch of one stage, from `read_train_log`."""
    part = log[log["stage"] == stage]
    ax.plot(part["epoch"], part["loss"], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean loss")
    ax.set_xticks(part["epoch"].tolist())
    ax.set_title(title, fontsize=9)


def read_train_log(run_dir: str | Path) -> pd.DataFrame:
    """train_log.jsonl as a table: stage, epoch, loss (mean over the epoch's steps)."""
    from aaclip.runs import read_log

    df = pd.DataFrame(read_log(run_dir), columns=["stage", "epoch", "loss", "time"])
    return df[["stage", "epoch", "loss"]]


@torch.no_grad()
def anchor_comparison(
    encoders: dict[str, tuple[torch.nn.Module, bool]],
    groups: Sequence[tuple[str, str | None, list[str]]],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """cos(t_n, t_a) per class for several text encoders, and the disentangle term.

    `encoders` maps a short name to (model, adapted), e.g. {"frozen": (m, False),
    "stage1": (m, True)}. Returns a per-class table (split, dataset, class_name,
    cos_<name>...) and, per split, the disentangle term (mean_c <t_n, t_a>)² of each
    encoder, computed with the training loss `losses.disentangle_loss` over the split.
    """
    rows, terms = [], []
    for split, dataset, names in groups:
        term: dict[str, Any] = {"split": split, "n_classes": len(names)}
        cos: dict[str, dict[str, float]] = {}
        for key, (model, adapted) in encoders.items():
            anchors = _anchors(model, names, dataset, adapted)
            stacked = torch.stack([anchors[n].float() for n in names])
            term[f"disentangle_{key}"] = float(losses.disentangle_loss(stacked))
            cos[key] = {n: float(a[:, 0] @ a[:, 1]) for n, a in anchors.items()}
        terms.append(term)
        rows += [
            {"split": split, "dataset": dataset, "class_name": n}
            | {f"cos_{key}": cos[key][n] for key in encoders}
            for n in names
        ]
    return pd.DataFrame(rows), pd.DataFrame(terms)


def initial_model(cfg: ExperimentConfig, device: torch.device) -> torch.nn.Module:
    """AA-CLIP with its adapters as `train` initialises them (seeded with train.seed)."""
    from aaclip.methods import create_method

    model = create_method(cfg, device)
    model.text_adapted = True  # its (untrained) text adapters are what stage 1 starts from
    return model


def predict_test_sets(
    cfg: ExperimentConfig,
    models: dict[str, torch.nn.Module],
    device: torch.device,
    progress: bool = False,
) -> dict[EvalSet, dict[str, dict[str, Any]]]:
    """`evaluate.predict` on every test set: {test set: {model: {class: ClassPredictions}}}."""
    from aaclip.evaluate import predict

    return {
        ts: predict(
            models,
            ts.records(),
            ts.root,
            dataset=ts.dataset,
            domain=ts.domain,
            batch_size=cfg.eval.batch_size,
            device=device,
            progress=progress,
        )
        for ts in eval_sets(cfg)
    }


def pick_examples(pred: Any, n_anomalous: int = 1, n_normal: int = 1) -> list[int]:
    """Indices of the anomalous images with the largest defects, then the first normal ones."""
    labels = np.asarray(pred.labels)
    area = pred.masks.flatten(1).sum(1).numpy()
    anomalous = [i for i in np.argsort(-area, kind="stable") if labels[i] == 1][:n_anomalous]
    normal = [i for i in range(len(labels)) if labels[i] == 0][:n_normal]
    return [int(i) for i in anomalous + normal]


def qualitative_grid(
    predictions: dict[EvalSet, dict[str, dict[str, Any]]],
    image_size: int,
    model_labels: dict[str, str],
    title: str,
    n_anomalous: int = 1,
    n_normal: int = 1,
) -> Figure:
    """Columns: examples of each held-out class; rows: image, ground truth, one map per model.

    Maps are the evaluation maps (normalised over each class's test images, in [0, 1]);
    the ground-truth outline is drawn in white on the maps of anomalous images.
    """
    columns = []  # (test set, class, index)
    for ts, per_model in predictions.items():
        first = next(iter(per_model.values()))
        for cls, pred in first.items():
            columns += [(ts, cls, i) for i in pick_examples(pred, n_anomalous, n_normal)]
    n_rows = 2 + len(model_labels)
    fig = Figure(figsize=(1.35 * len(columns) + 0.8, 1.45 * n_rows + 0.9))
    axes = fig.subplots(n_rows, len(columns), squeeze=False)
    for col, (ts, cls, i) in enumerate(columns):
        pred = next(iter(predictions[ts].values()))[cls]
        img = data.load_image(ts.root / pred.image_paths[i]).resize((image_size, image_size))
        axes[0, col].imshow(np.asarray(img))
        kind = "anomalous" if pred.labels[i] == 1 else "normal"
        axes[0, col].set_title(f"{cls}\n{kind}", fontsize=7)
        axes[1, col].imshow(pred.masks[i].numpy(), cmap="gray", vmin=0, vmax=1)
        for row, key in enumerate(model_labels, start=2):
            m = predictions[ts][key][cls].maps[i].numpy()
            axes[row, col].imshow(np.asarray(img), alpha=0.5)
            axes[row, col].imshow(m, cmap="jet", vmin=0, vmax=1, alpha=0.55)
            if pred.labels[i] == 1:
                axes[row, col].contour(
                    pred.masks[i].numpy(), levels=[0.5], colors="w", linewidths=0.7
                )
    row_names = ["image", "ground truth", *model_labels.values()]
    for row, ax_row in enumerate(axes):
        ax_row[0].set_ylabel(row_names[row], fontsize=8)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- 04: benchmark


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
    keys = [c for c in ("method", "dataset") if c in table]
    means = table[table["class_name"] == "mean"]
    return means[[*keys, *[c for c in columns if c in means]]].reset_index(drop=True)


def shots_label(cfg: ExperimentConfig) -> str:
    """'full' or the k of k-shot training, as in published_results.csv."""
    return "full" if cfg.train.shots is None else str(cfg.train.shots)


# --------------------------------------------------------------------------- 05: ablations


# Ablation runs under smoke: fewer epochs than the main run (quick: 1 + 1).
ABLATION_EPOCHS = {
    "smoke": ("model.stage1_epochs=2", "model.stage2_epochs=5"),
    "quick": ("train.max_epochs=1",),
}


def ablation_config(cfg: ExperimentConfig, quick: bool = False) -> ExperimentConfig:
    """The default the variants are compared against: the profile's config, with fewer
    epochs under smoke (and 1 + 1 in quick mode); the paper profile keeps its own."""
    if quick:
        return apply_overrides(cfg, list(ABLATION_EPOCHS["quick"]))
    if cfg.profile == "smoke":
        return apply_overrides(cfg, list(ABLATION_EPOCHS["smoke"]))
    return cfg


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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = run(vcfg, run_dir, device=device, progress=False).table
    messages = list(dict.fromkeys(str(w.message) for w in caught))
    return VariantResult(name, overrides, vcfg, Path(run_dir), table, messages)


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


# --------------------------------------------------------------------------- 06: metrics


def _as_numpy(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    maps = maps.numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    masks = masks.numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    return maps.astype(np.float64), masks.astype(bool)


def _region_weight_tail(maps: np.ndarray, masks: np.ndarray):
    """Sorted anomalous scores and the suffix sums of their region weights 1/(|r|·R)."""
    rid, sizes = metrics.label_regions(masks)
    pos = maps[masks]  # C order, the order label_regions uses
    weights = 1.0 / (sizes[rid] * len(sizes))
    order = np.argsort(pos, kind="stable")
    pos, weights = pos[order], weights[order]
    tail = np.r_[np.cumsum(weights[::-1])[::-1], 0.0]  # tail[i] = sum of weights[i:]
    return pos, tail


def pro_curve(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference PRO curve at every distinct score (predict anomalous when score >= t).

    Returns (thresholds descending, FPR, PRO), starting with (inf, 0, 0). Slow and simple;
    for plots and the reference variants below, not for evaluation (use `metrics.aupro`).
    """
    maps, masks = _as_numpy(maps, masks)
    neg = np.sort(maps[~masks])
    pos, tail = _region_weight_tail(maps, masks)
    thresholds = np.unique(maps)[::-1]
    fpr = (len(neg) - np.searchsorted(neg, thresholds, side="left")) / len(neg)
    pro = tail[np.searchsorted(pos, thresholds, side="left")]
    return np.r_[np.inf, thresholds], np.r_[0.0, fpr], np.r_[0.0, pro]


def aupro_wrong_last_fpr(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """WRONG AUPRO, kept as a reference only (anomalib before 2.3, as protocol.md describes).

    Keeps the curve points with FPR <= limit, integrates them (trapezoid) and divides by
    the last FPR reached instead of interpolating to the limit and dividing by the limit.
    """
    _, fpr, pro = pro_curve(maps, masks)
    keep = fpr <= fpr_limit
    x, y = fpr[keep], pro[keep]
    return float(np.trapezoid(y, x) / x[-1]) if x[-1] > 0 else float("nan")


def aupro_wrong_200_thresholds(
    maps: Any, masks: Any, fpr_limit: float = 0.3, steps: int = 200
) -> float:
    """WRONG AUPRO, kept as a reference only (cflow-ad / AnomalyCLIP `cal_pro_score` style).

    `steps` thresholds evenly spaced from min to max score (predict anomalous when
    score > t); points with FPR < limit are kept and their FPR axis is min-max rescaled to
    [0, 1] before integrating: the result depends on where the grid happens to fall.
    """
    maps, masks = _as_numpy(maps, masks)
    neg = np.sort(maps[~masks])
    pos, tail = _region_weight_tail(maps, masks)
    lo, hi = float(maps.min()), float(maps.max())
    thresholds = lo + (hi - lo) / steps * np.arange(steps)
    fpr = (len(neg) - np.searchsorted(neg, thresholds, side="right")) / len(neg)
    pro = tail[np.searchsorted(pos, thresholds, side="right")]
    keep = fpr < fpr_limit
    if keep.sum() < 2:
        return float("nan")
    x, y = fpr[keep], pro[keep]
    if x.max() == x.min():
        return float("nan")
    x = (x - x.min()) / (x.max() - x.min())
    order = np.argsort(x, kind="stable")
    return float(np.trapezoid(y[order], x[order]))


def aupro_variants(maps: Any, masks: Any, fpr_limit: float = 0.3) -> dict[str, float]:
    """The exact AUPRO (`metrics.aupro`) beside the two wrong reference variants."""
    return {
        "pixel_aupro": float(metrics.aupro(maps, masks, fpr_limit=fpr_limit)),
        "pixel_aupro_wrong_last_fpr": aupro_wrong_last_fpr(maps, masks, fpr_limit),
        "pixel_aupro_wrong_200_thresholds": aupro_wrong_200_thresholds(maps, masks, fpr_limit),
    }


def adversarial_aupro_case(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Two images whose PRO curve jumps across FPR = 0.3, where the variants disagree.

    One small region is found first at high scores spread over (0.8, 1.0); a large region
    only scores 0.5, tied with most of the normal pixels; 5% of normal pixels score in
    (0.6, 0.8). The exact curve interpolates across the jump from FPR ~0.05 to ~0.7, the
    last-FPR variant stops at FPR ~0.05, the 200-threshold variant rescales that stretch.
    """
    rng = np.random.default_rng(0)
    masks = np.zeros((2, size, size), bool)
    masks[0, 4:10, 4:10] = True  # small region
    masks[1, 16:48, 16:48] = True  # large region
    maps = np.zeros((2, size, size))
    normal = np.flatnonzero(~masks.ravel())
    rng.shuffle(normal)
    n_top, n_tied = int(0.05 * len(normal)), int(0.65 * len(normal))
    flat = maps.reshape(-1)
    flat[normal[:n_top]] = rng.uniform(0.6, 0.8, n_top)
    flat[normal[n_top : n_top + n_tied]] = 0.5
    flat[normal[n_top + n_tied :]] = rng.uniform(0.0, 0.3, len(normal) - n_top - n_tied)
    maps[0][masks[0]] = rng.uniform(0.8, 1.0, masks[0].sum())
    maps[1][masks[1]] = 0.5
    return maps.astype(np.float32), masks


def only_anomalous(pred: Any) -> Any:
    """The same class restricted to its anomalous images: a single-label class (like the
    colon sets), for which image metrics are undefined."""
    keep = np.flatnonzero(np.asarray(pred.labels) == 1)
    return dataclasses.replace(
        pred,
        class_name=f"{pred.class_name} (anomalous only)",
        maps=pred.maps[keep],
        scores=pred.scores[keep],
        labels=np.asarray(pred.labels)[keep],
        masks=pred.masks[keep],
        image_paths=[pred.image_paths[i] for i in keep],
    )
