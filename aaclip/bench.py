"""`aaclip bench`: throughput, latency and peak memory of inference and training steps.

Random weights run at the same speed as real ones, so no weights file is needed. Each call
appends one row per measurement to `<out>/bench.csv` with the device named (default
`results/_scratch/bench/`, untracked; `--out results/bench` appends to the tracked table).
"""

from __future__ import annotations

import csv
import io
import platform
import resource
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from aaclip.config import BackboneConfig, ExperimentConfig
from aaclip.methods import create_method, method_class
from aaclip.results import SCRATCH
from aaclip.runtime import device_name, pick_device
from aaclip.train import Optimiser, train_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process RSS, KiB -> GiB


def _timed(fn, device: torch.device, steps: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _batch(n: int, size: int, device: torch.device, classes: int = 2) -> dict:
    masks = torch.zeros(n, 1, size, size, device=device)
    masks[: n // 2, :, size // 4 : size // 2, size // 4 : size // 2] = 1
    return {
        "image": torch.randn(n, 3, size, size, device=device),
        "mask": masks,
        "label": (masks.flatten(1).amax(1) > 0).long(),
        "class_name": [f"object{i % classes}" for i in range(n)],
        "has_mask": masks.flatten(1).amax(1) > 0,
        "class_has_masks": torch.ones(n, dtype=torch.bool, device=device),  # segmentation sets
    }


def bench_model(
    backbone: str,
    image_size: int,
    batch_size: int,
    device: torch.device,
    precision: str,
    steps: int,
    weights: str | None = None,
    train: bool = True,
    warmup: int = 1,
    method: str = "aaclip",
    onnx: bool = False,
) -> list[dict]:
    """Inference with scoring, then one timed training step per stage of the method (at the
    stage's own batch size from the method's released schedule). `onnx`: also the same
    inference exported to ONNX (`aaclip.export`) in an onnxruntime CPU session."""
    model_cfg = method_class(method).Config()
    if hasattr(model_cfg, "class_descriptions"):
        model_cfg.class_descriptions = "plain"
    cfg = ExperimentConfig(
        method=method,
        backbone=BackboneConfig(backbone, weights, image_size, precision=precision),
        model=model_cfg,
    )
    model = create_method(cfg, device)
    batch = _batch(batch_size, image_size, device)
    ctx = model.prepare_class("object0", None, "industrial")

    @torch.no_grad()
    def infer():
        model.predict(batch["image"], ctx)

    model.eval()
    _reset_peak(device)
    rows = [_row("inference+scoring", batch_size, _timed(infer, device, steps, warmup), device)]
    if onnx:
        rows.append(_onnx_row(model, ctx, batch["image"], steps, warmup))
    if not train:
        return rows
    for stage in model.stages():
        data = _batch(stage.batch_size, image_size, device)
        opt = Optimiser.for_stage(model, stage)
        model.start_stage(stage, ["object0", "object1"], None)
        model.train()

        def step(stage=stage, data=data, opt=opt):
            train_step(model, stage, data, opt, precision)

        _reset_peak(device)
        what = f"train step ({stage.name})"
        rows.append(_row(what, stage.batch_size, _timed(step, device, steps, warmup), device))
        model.eval()
    return rows


def _onnx_row(model, ctx, images: torch.Tensor, steps: int, warmup: int) -> dict:
    """The inference row of the model exported to ONNX, run by onnxruntime on the CPU with
    torch's thread count."""
    import tempfile

    from aaclip.deploy import OnnxDetector
    from aaclip.export import ExportedDetector, export_onnx

    device = images.device
    detector = ExportedDetector(model, ctx.text, ctx.class_name, ctx.domain)
    with tempfile.TemporaryDirectory(prefix="aaclip-bench-onnx-") as tmp:
        export_onnx(detector, Path(tmp) / "model.onnx", images.shape[-1])
        model.to(device)
        session = OnnxDetector(tmp, torch.get_num_threads())
        x = images.cpu().numpy()
        times = _timed(lambda: session.run(x), torch.device("cpu"), steps, warmup)
    return _row("inference+scoring (onnxruntime cpu)", len(x), times, torch.device("cpu"))


def bench_metrics(n: int = 1725, size: int = 518, seed: int = 0) -> list[dict]:
    """Time the pixel metrics (AUROC/AP/F1-max and AUPRO) on a synthetic MVTec-size input."""
    from aaclip import metrics

    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    yy, xx = np.mgrid[:size, :size]
    for i in range(0, n, 2):  # half the images get 1-3 elliptic defects
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            ry, rx = rng.integers(3, size // 8, 2)
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    maps = rng.random((n, size, size), dtype=np.float32) + masks.astype(np.float32) * 0.5
    rows = []
    for name, fn in (
        ("pixel auroc+ap+f1", lambda: metrics.pixel_metrics(maps, masks, aupro=False)),
        ("pixel aupro", lambda: metrics.aupro(maps, masks)),
    ):
        t0 = time.perf_counter()
        fn()
        rows.append(
            {
                "what": f"metrics: {name}",
                "batch_size": n,
                "image_size": size,
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )
    return rows


def _row(what: str, batch: int, times: list[float], device: torch.device) -> dict:
    med = float(np.median(times))
    return {
        "what": what,
        "batch_size": batch,
        "latency_ms": round(1000 * med, 2),
        "images_per_s": round(batch / med, 2),
        "peak_mem_gib": round(_peak_gib(device), 3),
    }


def run_bench(
    backbone: str = "ViT-L-14-336",
    image_size: int = 518,
    batch_size: int = 16,
    device: str | None = None,
    precision: str = "bf16",
    steps: int = 5,
    out_dir: str | Path = SCRATCH / "bench",
    metrics: bool = True,
    weights: str | None = None,
    metrics_n: int = 1725,
    train: bool = True,
    warmup: int = 1,
    method: str = "aaclip",
    onnx: bool = False,
) -> list[dict]:
    """Run the benchmarks, print nothing, append rows to `out_dir/bench.csv` and return them."""
    dev = pick_device(device)
    if dev.type == "cpu":
        precision = "fp32"  # bf16 autocast is a GPU feature here
    rows = bench_model(
        backbone,
        image_size,
        batch_size,
        dev,
        precision,
        steps,
        weights,
        train=train,
        warmup=warmup,
        method=method,
        onnx=onnx,
    )
    if metrics:
        rows += bench_metrics(metrics_n)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    common = {
        "date": stamp,
        "device": device_name(dev),
        "method": method,
        "backbone": backbone,
        "precision": precision,
        "torch": torch.__version__,
        "host": platform.node(),
    }
    rows = [{**common, "image_size": image_size, **r} for r in rows]  # metric rows: own size
    _append_csv(Path(out_dir) / "bench.csv", rows)
    return rows


FIELDS = [
    "date",
    "device",
    "host",
    "backbone",
    "image_size",
    "precision",
    "what",
    "batch_size",
    "latency_ms",
    "images_per_s",
    "peak_mem_gib",
    "seconds",
    "torch",
    "method",
]


def _append_csv(path: Path, rows: list[dict]) -> None:
    """Append rows; a file written with fewer columns is rewritten with the current header."""
    from aaclip.fileio import atomic_write_text

    old: list[dict] = []
    if path.is_file():
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows([*old, *rows])
    atomic_write_text(path, buf.getvalue())


def bench_table(rows: list[dict]) -> str:
    """The rows as a plain-text table for the terminal."""
    import pandas as pd

    cols = [c for c in FIELDS if c not in ("date", "host", "torch")]
    df = pd.DataFrame(rows)
    return df[[c for c in cols if c in df]].to_string(index=False)
