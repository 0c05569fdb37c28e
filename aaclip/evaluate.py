"""Evaluation: records -> anomaly maps and image scores -> per-class metrics -> run records.

Several checkpoints of one method and backbone are scored in one pass over the data: every
image is decoded, resized and moved to the device once, then each checkpoint's method runs on
it. The pass never looks inside a method: it calls `prepare_class`, `fit_memory`, `predict`
and `class_scores` of the `Method` contract.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from aaclip import checkpoints as ck
from aaclip import data, distributed, metrics, prompts
from aaclip.backbone import build_backbone
from aaclip.config import ExperimentConfig
from aaclip.fileio import atomic_write_text
from aaclip.methods import Method, Prediction, create_method, method_class
from aaclip.results import (
    beside_published,
    deviations,
    long_means,
    published_name,
    shots_label,
    write_table,
)
from aaclip.runtime import device_name, pick_device

METRIC_COLUMNS = [
    "image_auroc",
    "image_ap",
    "image_f1_max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1_max",
    "pixel_aupro",
]


@dataclass(frozen=True)
class EvalSet:
    """One test set of a config: its records file, dataset name and scoring domain, and
    (few-shot) the records file of its reference normals."""

    records_file: Path
    dataset: str | None
    domain: str
    memory_file: Path | None = None

    @property
    def root(self) -> Path:
        return self.records_file.parent

    def records(self) -> list[data.Record]:
        # Classification-only sets (anomalies without masks) are allowed at test time; their
        # pixel metrics are reported as missing.
        return data.load_records(self.records_file, require_masks=False)

    def memory(self) -> list[data.Record] | None:
        """The reference-normal records (label 0) of the memory file; None: zero-shot."""
        if self.memory_file is None:
            return None
        records = data.load_records(self.memory_file, require_masks=False)
        return [r for r in records if r.label == 0]


def eval_sets(cfg: ExperimentConfig) -> list[EvalSet]:
    """The config's test sets; domains from the config, else the dataset table (industrial)."""
    n = len(cfg.data.test_records)
    datasets = cfg.data.test_datasets or (None,) * n
    domains = cfg.data.test_domains or tuple(prompts.domain_of(d) for d in datasets)
    memory = cfg.data.memory_records or ("",) * n
    if len(memory) != n:
        raise ValueError(
            f"data.memory_records names {len(memory)} files for {n} test sets; give one per "
            'test set ("" for none)'
        )
    return [
        EvalSet(Path(f), d, dom, Path(m) if m else None)
        for f, d, dom, m in zip(cfg.data.test_records, datasets, domains, memory, strict=True)
    ]


@dataclass
class ClassPredictions:
    """Normalised maps and image scores of one class, with its ground truth."""

    class_name: str
    maps: torch.Tensor  # (N, S, S) float32, normalised over the class by the method's rule
    scores: torch.Tensor  # (N,)
    labels: np.ndarray  # (N,) int
    masks: torch.Tensor  # (N, S, S) bool
    image_paths: list[str] = field(default_factory=list)
    has_masks: bool = True  # False for classification-only sets: pixel metrics undefined
    raw: Prediction | None = None  # the method's raw outputs, before class normalisation


def load_methods(
    cfg: ExperimentConfig, checkpoints: list[str | Path], device: torch.device
) -> dict[str, Method]:
    """One method per checkpoint (named by the file stem), all on one frozen backbone.

    Without checkpoints: the method as initialised (the training-free CLIP baseline, or an
    untrained method, named by the method). A checkpoint of another method or backbone is
    refused by name.
    """
    trains = bool(method_class(cfg.method).schedule(cfg.model))
    backbone = build_backbone(cfg.backbone, device)
    if not checkpoints:
        return {"untrained" if trains else cfg.method: create_method(cfg, device, backbone)}
    methods = {}
    for path in checkpoints:
        tensors, _ = ck.load_adapters(path, backbone.identity, cfg.method)
        method = create_method(cfg, device, backbone)
        method.load_adapter_state(tensors, str(path))
        methods[Path(path).stem] = method.eval()
    return methods


load_models = load_methods  # the name the notebooks used before the Method contract


@torch.no_grad()
def predict(
    methods: dict[str, Method],
    records: list[data.Record],
    root: str | Path,
    *,
    dataset: str | None,
    domain: str,
    batch_size: int = 16,
    device: torch.device | None = None,
    progress: bool = True,
    num_workers: int = 0,
    keep_raw: bool = False,
    shards: distributed.Shards | None = None,
    memory: list[data.Record] | None = None,
    memory_root: str | Path | None = None,
) -> dict[str, dict[str, ClassPredictions]]:
    """Maps and scores per method and class, each class normalised by the method's rule.

    All methods must share one input spec (the checkpoints of one run do). On a GPU the maps
    stay on it, so the metrics run there too (torch backend). With `memory` (few-shot
    reference normals, paths under `memory_root`), each method's `fit_memory` gets the
    class's normal images before its test images are scored. Under torchrun (`shards`) each
    rank scores its share of the batches and rank 0 alone returns the classes.
    """
    shards = shards or distributed.Shards()
    first = next(iter(methods.values()))
    spec = first.input_spec()
    if any(m.input_spec() != spec for m in methods.values()):
        raise ValueError("methods scored in one pass must share one input spec")
    device = device or first.device
    keep = device if device.type == "cuda" else torch.device("cpu")
    out: dict[str, dict[str, ClassPredictions]] = {name: {} for name in methods}
    main = shards.ctx.is_main
    bar = tqdm(total=len(records), desc=f"evaluate {dataset}", disable=not progress or not main)
    for cls in data.class_names(records):
        subset = [r for r in records if r.class_name == cls]
        has_masks = all(r.mask_path for r in subset if r.label == 1)
        ctx = {n: m.prepare_class(cls, dataset, domain, has_masks) for n, m in methods.items()}
        if memory is not None:
            normals = reference_images(memory, memory_root or root, cls, spec, device)
            normals = normals.to(first.dtype)
            ctx = {n: m.fit_memory(ctx[n], normals) for n, m in methods.items()}
        loader = DataLoader(
            data.RecordDataset(
                subset, root, spec.image_size, "none", spec.mean, spec.std, first.dtype
            ),
            batch_sampler=shards.batches(len(subset), batch_size),
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )
        parts: dict[str, list[Prediction]] = {name: [] for name in methods}
        masks, labels, paths = [], [], []
        for batch in loader:
            images = batch["image"].to(device, first.dtype, non_blocking=True)
            for name, method in methods.items():
                parts[name].append(method.predict(images, ctx[name]).to(keep))
            masks.append((batch["mask"][:, 0] > 0.5).to(keep))
            labels.append(batch["label"].numpy())
            paths.append(batch["image_path"])
            bar.update(len(images))
        gathered = shards.gather([*parts.values(), masks, labels, paths], keep)
        if gathered is None:  # under torchrun, rank 0 scores the classes
            continue
        *per_method, masks, labels, paths = gathered
        parts = dict(zip(methods, per_method, strict=True))
        gt_masks, gt_labels = torch.cat(masks), np.concatenate(labels)
        paths = [p for batch_paths in paths for p in batch_paths]
        for name, method in methods.items():
            raw = Prediction.cat(parts[name])
            m, s = method.class_scores(raw, ctx[name])
            out[name][cls] = ClassPredictions(
                cls, m, s, gt_labels, gt_masks, paths, has_masks, raw if keep_raw else None
            )
    bar.close()
    return out


def reference_images(
    memory: list[data.Record],
    root: str | Path,
    class_name: str,
    spec,
    device: torch.device,
) -> torch.Tensor:
    """(N, 3, S, S) normal images of one class from few-shot memory records, prepared as the
    method's input spec says; a class without any is one error line."""
    normals = [r for r in memory if r.class_name == class_name and r.label == 0]
    if not normals:
        known = ", ".join(sorted({r.class_name for r in memory})) or "none"
        raise data.RecordError(
            f"memory records: no normal image of class {class_name!r} to fit the few-shot "
            f"memory bank on (classes with normals: {known})"
        )
    ds = data.RecordDataset(normals, root, spec.image_size, "none", spec.mean, spec.std)
    return torch.stack([ds[i]["image"] for i in range(len(ds))]).to(device)


def class_metrics(pred: ClassPredictions, aupro: bool = True) -> dict[str, float]:
    """All metrics of one class; undefined ones are NaN (reported as missing), never 0."""
    labels = pred.labels
    row = {"class_name": pred.class_name, "n_images": len(labels), "n_anomalous": int(labels.sum())}
    if labels.min() == labels.max():
        warnings.warn(
            f"class {pred.class_name}: all {len(labels)} images have label {labels[0]}; "
            "image metrics are undefined and reported as missing",
            stacklevel=2,
        )
    row.update(metrics.image_metrics(pred.scores.cpu().numpy(), labels, name=pred.class_name))
    if pred.has_masks:
        row.update(metrics.pixel_metrics(pred.maps, pred.masks, aupro=aupro, name=pred.class_name))
    else:
        row.update({c: float("nan") for c in METRIC_COLUMNS if c.startswith("pixel")})
    return row


def metrics_table(preds: dict[str, ClassPredictions], aupro: bool = True) -> pd.DataFrame:
    """Per-class rows plus a 'mean' row (unweighted over the classes where a metric is defined)."""
    rows = [class_metrics(p, aupro) for p in preds.values()]
    df = pd.DataFrame(rows)
    mean = {
        "class_name": "mean",
        "n_images": df["n_images"].sum(),
        "n_anomalous": df["n_anomalous"].sum(),
    }
    mean.update({c: df[c].mean(skipna=True) for c in METRIC_COLUMNS if c in df})
    return pd.concat([df, pd.DataFrame([mean])], ignore_index=True)


def run_record(
    cfg: ExperimentConfig,
    method: Method,
    dataset: str,
    n_records: int,
    device: torch.device,
    wall: float,
    checkpoint: str | None,
) -> dict:
    """Everything needed to tell later where a table came from."""
    import open_clip
    import sklearn

    return {
        "config": cfg.to_dict(),
        "profile": cfg.profile,
        "checkpoint": checkpoint,
        "method": method.name,
        "backbone": method.backbone.identity,
        "dataset": dataset,
        "n_records": n_records,
        "git_revision": _git_revision(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
        },
        "device": device_name(device),
        "wall_time_s": round(wall, 2),
    }


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def evaluate(
    cfg: ExperimentConfig,
    checkpoints: list[str | Path],
    out_dir: str | Path,
    device: str | None = None,
    progress: bool = True,
    aupro: bool = True,
    selected_on_test: bool = False,
) -> pd.DataFrame:
    """Score checkpoints on every test set of the config; write CSV, markdown and run records.

    Returns a long table with one row per (checkpoint, dataset, class) plus per-dataset means.
    """
    ctx = distributed.setup(pick_device(device))
    dev, shards = ctx.device, distributed.Shards(ctx)
    methods = load_methods(cfg, list(checkpoints), dev)
    out_dir = Path(out_dir)
    tables = []
    for ts in eval_sets(cfg):
        t0 = time.time()
        records, dataset = ts.records(), ts.dataset
        preds = predict(
            methods,
            records,
            ts.root,
            dataset=dataset,
            domain=ts.domain,
            batch_size=cfg.eval.batch_size,
            device=dev,
            progress=progress,
            num_workers=cfg.eval.num_workers,
            shards=shards,
            memory=ts.memory(),
            memory_root=ts.memory_file.parent if ts.memory_file else None,
        )
        wall = time.time() - t0
        if not ctx.is_main:  # under torchrun rank 0 computes and writes the tables
            continue
        for name, per_class in preds.items():
            df = metrics_table(per_class, aupro)
            df.insert(0, "dataset", dataset)
            df.insert(0, "checkpoint", name)
            tables.append(df)
            stem = out_dir / name / str(dataset)
            differs = deviations(cfg, selected_on_test=selected_on_test, checkpoint=name)
            note = _profile_note(cfg, selected_on_test, differs)
            write_table(df, stem / "metrics", note=note)
            record = run_record(cfg, methods[name], str(dataset), len(records), dev, wall, name)
            record["per_class"] = json.loads(df.to_json(orient="records"))
            record["selected_on_test"] = selected_on_test
            record["deviations_from_paper"] = differs
            if ctx.world > 1:
                record["processes"] = ctx.world
            atomic_write_text(stem / "run.json", json.dumps(record, indent=2, default=str))
    table = pd.concat(tables, ignore_index=True) if ctx.is_main else None
    if table is not None and cfg.profile == "paper":
        write_beside_published(cfg, table, out_dir, selected_on_test)
    return ctx.broadcast(table)


def write_beside_published(
    cfg: ExperimentConfig, table: pd.DataFrame, out_dir: str | Path, selected_on_test: bool = False
) -> list[Path]:
    """`<out_dir>/<checkpoint>/beside_published.{csv,md}`: the mean of each target it ran
    beside the published number (`results.beside_published`), with the deviations noted."""
    written = []
    for name, part in table.groupby("checkpoint", sort=False):
        measured = long_means(part, published_name(cfg.method), cfg.data.train_dataset,
                              shots_label(cfg))  # fmt: skip
        beside = beside_published(measured)
        differs = deviations(cfg, selected_on_test=selected_on_test, checkpoint=str(name))
        stem = Path(out_dir) / str(name) / "beside_published"
        write_table(beside, stem, note=_profile_note(cfg, selected_on_test, differs))
        written.append(stem.with_suffix(".md"))
    return written


def _profile_note(cfg: ExperimentConfig, selected_on_test: bool, differs=()) -> str:
    notes = []
    if cfg.profile == "smoke":
        notes.append(
            "SMOKE PROFILE: tiny randomly initialised CLIP on the embedded synthetic dataset; "
            "proves the pipeline, not the paper."
        )
    if selected_on_test:
        notes.append("CHECKPOINT SELECTED ON THE TEST SET: optimistic, not a fair estimate.")
    if differs:
        notes.append(f"Differs from the paper's settings: {'; '.join(differs)}.")
    return " ".join(notes)
