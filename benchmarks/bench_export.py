"""ONNX export: parity with PyTorch and images/s of onnxruntime vs PyTorch eager on the CPU.

    python benchmarks/bench_export.py [--models tiny,vitl] [--threads 2] [--steps 5]

For each model (random weights run at the speed of real ones): build AA-CLIP, export one
class with `aaclip.export` (`--backbone reference`, `--onnx`) into a temporary folder, load
it back through `aaclip.deploy` (manifest and hashes checked) with both runtimes, then

- parity: max |ONNX - PyTorch| of the raw maps and raw image scores on seeded random images,
  at batch 1 and at batch 2 (the batch axis is dynamic), next to the largest |value|;
- speed: median latency of batch 1 (and `--batch`) after a warm-up, PyTorch eager
  (`torch.set_num_threads(threads)`) vs an onnxruntime CPU session with as many threads.

Models: `tiny` = aaclip-tiny at 128 px (the smoke profile), `vitl` = ViT-L-14-336 at 518 px
(the paper's). Rows are printed and appended to `results/_scratch/bench/export.csv`
(untracked). `--keep DIR` keeps the exports there, so a later run only times (ViT-L's
export takes minutes).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from aaclip import deploy
from aaclip.config import BackboneConfig, ExperimentConfig
from aaclip.export import detector_for, export_detector
from aaclip.methods import create_method
from aaclip.methods.aaclip import AAClipConfig

MODELS = {"tiny": ("aaclip-tiny", 128), "vitl": ("ViT-L-14-336", 518)}
FIELDS = [
    "date",
    "host",
    "cpu",
    "threads",
    "load_avg",
    "model",
    "image_size",
    "batch_size",
    "export_s",
    "max_abs_diff_maps",
    "max_abs_maps",
    "max_abs_diff_scores",
    "torch_ms",
    "onnxruntime_ms",
    "torch_images_per_s",
    "onnxruntime_images_per_s",
    "torch",
    "onnxruntime",
]


def _median_ms(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def bench(
    model: str, threads: int, steps: int, warmup: int, batches: list[int], keep: Path | None
) -> list[dict]:
    import onnxruntime

    name, size = MODELS[model]
    cfg = ExperimentConfig(
        method="aaclip",
        backbone=BackboneConfig(name, None, size),
        model=AAClipConfig(class_descriptions="plain"),
    )
    method = create_method(cfg, "cpu")
    detector = detector_for(method, "bottle", "industrial")
    rows = []
    with tempfile.TemporaryDirectory(prefix="aaclip-export-") as tmp:
        folder = Path(keep) / model if keep else Path(tmp) / "export"
        export_s = float("nan")
        if not (folder / "manifest.json").is_file():  # --keep: export once, time many
            t0 = time.perf_counter()
            export_detector(
                detector, cfg, folder, backbone="reference", onnx=True, report=lambda m: None
            )
            export_s = time.perf_counter() - t0
        del detector, method
        torch.set_num_threads(threads)
        eager = deploy.load_torch(folder, device="cpu")
        onnx = deploy.OnnxDetector(folder, threads)
        g = torch.Generator().manual_seed(0)
        diffs = {}
        for b in sorted({1, 2, *batches}):
            x = torch.randn(b, 3, size, size, generator=g)
            ref = eager.predict(x)
            maps, scores = onnx.run(x.numpy())
            diffs[b] = (
                float(np.abs(maps - ref.maps.numpy()).max()),
                float(np.abs(ref.maps.numpy()).max()),
                float(np.abs(scores - ref.scores.numpy()).max()),
            )
            print(
                f"{model} batch {b}: max |diff| maps {diffs[b][0]:.3g} (|maps| <= "
                f"{diffs[b][1]:.3g}), scores {diffs[b][2]:.3g}",
                flush=True,
            )
        for b in batches:
            x = torch.randn(b, 3, size, size, generator=g)
            xn = x.numpy()
            t_torch = _median_ms(lambda x=x: eager.predict(x), steps, warmup)
            t_onnx = _median_ms(lambda xn=xn: onnx.run(xn), steps, warmup)
            d = diffs[b] if b in diffs else diffs[1]
            rows.append(
                {
                    "model": name,
                    "image_size": size,
                    "batch_size": b,
                    "export_s": round(export_s, 1),
                    "max_abs_diff_maps": f"{max(v[0] for v in diffs.values()):.3g}",
                    "max_abs_maps": f"{d[1]:.3g}",
                    "max_abs_diff_scores": f"{max(v[2] for v in diffs.values()):.3g}",
                    "torch_ms": round(t_torch, 1),
                    "onnxruntime_ms": round(t_onnx, 1),
                    "torch_images_per_s": round(1000 * b / t_torch, 3),
                    "onnxruntime_images_per_s": round(1000 * b / t_onnx, 3),
                    "onnxruntime": onnxruntime.__version__,
                }
            )
            print(
                f"{model} batch {b}: torch {t_torch:.1f} ms, onnxruntime {t_onnx:.1f} ms",
                flush=True,
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="tiny,vitl", help="comma-separated: tiny, vitl")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, action="append", help="timed batch sizes (default 1)")
    p.add_argument("--out", type=Path, default=Path("results/_scratch/bench/export.csv"))
    p.add_argument("--keep", type=Path, help="export into KEEP/MODEL once, reuse it next time")
    args = p.parse_args()
    common = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
    }
    rows = []
    for model in args.models.split(","):
        load = f"{os.getloadavg()[0]:.1f}"
        for row in bench(
            model, args.threads, args.steps, args.warmup, args.batch or [1], args.keep
        ):
            rows.append({**common, "load_avg": load, **row})
    old = []
    if args.out.is_file():
        with open(args.out, newline="") as f:
            old = list(csv.DictReader(f))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([*old, *rows])
    cols = ["model", "image_size", "batch_size", "max_abs_diff_maps", "max_abs_diff_scores"]
    cols += ["torch_images_per_s", "onnxruntime_images_per_s", "export_s", "load_avg"]
    writer = csv.DictWriter(sys.stdout, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


if __name__ == "__main__":
    main()
