"""Evaluation: records -> anomaly maps and image scores -> per-class metrics -> run records.

Several checkpoints of one backbone are scored in one pass over the data: every image is
decoded, resized and moved to the device once, then each checkpoint's adapters run on it.
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
from aaclip import data, metrics, prompts, scoring
from aaclip.config import ExperimentConfig
from aaclip.fileio import atomic_write_text
from aaclip.methods.aaclip import AAClip
from aaclip.methods.clip import ClipBaseline
from aaclip.results import write_table
from aaclip.train import autocast, build_backbone, build_model, pick_device

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
    """One test set of a config: its records file, dataset name and scoring domain."""

    records_file: Path
    dataset: str | None
    domain: str

    @property
    def root(self) -> Path:
        return self.records_file.parent

    def records(self) -> list[data.Record]:
        # Classification-only sets (anomalies without masks) are allowed at test time; their
        # pixel metrics are reported as missing.
        return data.load_records(self.records_file, require_masks=False)


def eval_sets(cfg: ExperimentConfig) -> list[EvalSet]:
    """The config's test sets; domains from the config, else the dataset table (industrial)."""
    n = len(cfg.data.test_records)
    datasets = cfg.data.test_datasets or (None,) * n
    domains = cfg.data.test_domains or tuple(prompts.domain_of(d) for d in datasets)
    return [
        EvalSet(Path(f), d, dom)
        for f, d, dom in zip(cfg.data.test_records, datasets, domains, strict=True)
    ]


@dataclass
class ClassPredictions:
    """Normalised maps and image scores of one class, with its ground truth."""

    class_name: str
    maps: torch.Tensor  # (N, S, S) float32, min-max normalised over the class
    scores: torch.Tensor  # (N,)
    labels: np.ndarray  # (N,) int
    masks: torch.Tensor  # (N, S, S) bool
    image_paths: list[str] = field(default_factory=list)
    has_masks: bool = True  # False for classification-only sets: pixel metrics undefined


def load_models(
    cfg: ExperimentConfig, checkpoints: list[str | Path], device: torch.device
) -> dict[str, AAClip]:
    """One AAClip per checkpoint, all sharing a single frozen backbone (or the CLIP baseline)."""
    if cfg.method == "clip":  # no adapters to build
        return {"clip": ClipBaseline(build_backbone(cfg, device), cfg.model).eval()}
    base = build_model(cfg, device)
    models = {}
    for path in checkpoints:
        tensors, meta = ck.load_adapters(path, base.clip.aaclip_identity)
        model = AAClip(base.clip, base.cfg, base.tokenizer).to(device)
        model.load_adapter_state(tensors, str(path))
        # Without stage-1 epochs the anchors come from the frozen CLIP text encoder.
        model.text_adapted = meta.get("config", {}).get("train", {}).get("stage1_epochs", 1) > 0
        models[Path(path).stem] = model.eval()
    if not models:
        base.text_adapted = False
        models["untrained"] = base.eval()
    return models


@torch.no_grad()
def predict(
    models: dict[str, AAClip],
    records: list[data.Record],
    root: str | Path,
    dataset: str | None,
    domain: str,
    image_size: int,
    batch_size: int = 16,
    device: torch.device | None = None,
    precision: str = "fp32",
    progress: bool = True,
    num_workers: int = 0,
) -> dict[str, dict[str, ClassPredictions]]:
    """Maps and scores per model and class, each class normalised over its own images.

    On a GPU the maps stay on it, so the metrics run there too (torch backend).
    """
    device = device or next(iter(models.values())).clip.token_embedding.weight.device
    keep = device if device.type == "cuda" else torch.device("cpu")
    out: dict[str, dict[str, ClassPredictions]] = {name: {} for name in models}
    classes = data.class_names(records)
    bar = tqdm(total=len(records), desc=f"evaluate {dataset}", disable=not progress)
    for cls in classes:
        subset = [r for r in records if r.class_name == cls]
        anchors = {
            name: m.anchors_for([cls], dataset, adapted=m.text_adapted)[cls].float()
            for name, m in models.items()
        }
        loader = DataLoader(
            data.RecordDataset(subset, root, image_size, augment="none"),
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )
        maps = {name: [] for name in models}
        probs = {name: [] for name in models}
        masks, labels, paths = [], [], []
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            for name, model in models.items():
                with autocast(device, precision):
                    seg, det = model.encode_image(images)
                amap = scoring.anomaly_map(seg, anchors[name], image_size, domain)
                maps[name].append(amap.to(keep))
                probs[name].append(scoring.image_probability(det, anchors[name]).to(keep))
            masks.append((batch["mask"][:, 0] > 0.5).to(keep))
            labels.append(batch["label"].numpy())
            paths.extend(batch["image_path"])
            bar.update(len(images))
        gt_masks, gt_labels = torch.cat(masks), np.concatenate(labels)
        has_masks = all(r.mask_path for r in subset if r.label == 1)
        for name in models:
            m, s = scoring.class_scores(torch.cat(maps[name]), torch.cat(probs[name]), domain)
            out[name][cls] = ClassPredictions(cls, m, s, gt_labels, gt_masks, paths, has_masks)
    bar.close()
    return out


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
    model: AAClip,
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
        "backbone": model.clip.aaclip_identity,
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
        "device": _device_name(device),
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


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


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
    dev = pick_device(device)
    models = load_models(cfg, list(checkpoints), dev)
    out_dir = Path(out_dir)
    tables = []
    for ts in eval_sets(cfg):
        t0 = time.time()
        records, dataset = ts.records(), ts.dataset
        preds = predict(
            models,
            records,
            ts.root,
            dataset,
            ts.domain,
            cfg.backbone.image_size,
            cfg.eval_batch_size,
            dev,
            cfg.backbone.precision,
            progress,
            cfg.train.num_workers,
        )
        wall = time.time() - t0
        for name, per_class in preds.items():
            df = metrics_table(per_class, aupro)
            df.insert(0, "dataset", dataset)
            df.insert(0, "checkpoint", name)
            tables.append(df)
            stem = out_dir / name / str(dataset)
            note = _profile_note(cfg, selected_on_test)
            write_table(df, stem / "metrics", note=note)
            record = run_record(cfg, models[name], str(dataset), len(records), dev, wall, name)
            record["per_class"] = json.loads(df.to_json(orient="records"))
            record["selected_on_test"] = selected_on_test
            atomic_write_text(stem / "run.json", json.dumps(record, indent=2, default=str))
    return pd.concat(tables, ignore_index=True)


def _profile_note(cfg: ExperimentConfig, selected_on_test: bool) -> str:
    notes = []
    if cfg.profile == "smoke":
        notes.append(
            "SMOKE PROFILE: tiny randomly initialised CLIP on the embedded synthetic dataset; "
            "proves the pipeline, not the paper."
        )
    if selected_on_test:
        notes.append("CHECKPOINT SELECTED ON THE TEST SET: optimistic, not a fair estimate.")
    return " ".join(notes)
