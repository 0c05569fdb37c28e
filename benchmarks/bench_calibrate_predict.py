"""Wall times of `aaclip calibrate` (200 normal images) and `aaclip predict` (100 images) with
the smoke model on the CPU, as a user runs them: whole commands, start-up included (not a test).

Uses the smoke run `make reproduce` leaves (runs/smoke/aaclip, copied to a scratch folder so
its calibration file does not land there; else an untrained smoke checkpoint) and the
embedded dataset (its normal records for `calibrate`, its test images for `predict`).

Usage: ``python benchmarks/bench_calibrate_predict.py [--normals 200] [--images 100]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_CHECKPOINT = ROOT / "runs/smoke/aaclip/checkpoints/stage2_epoch020.safetensors"


def _checkpoint(scratch: Path) -> Path:
    out = scratch / "model.safetensors"
    if RUN_CHECKPOINT.is_file():
        shutil.copy(RUN_CHECKPOINT, out)
        return out
    sys.path.insert(0, str(ROOT))
    from aaclip import checkpoints as ck
    from aaclip.config import preset
    from aaclip.methods import create_method

    cfg = preset("smoke")
    model = create_method(cfg, "cpu")
    meta = {"method": model.name, "stage": 2, "epoch": 0, "config": cfg.to_dict()}
    meta["backbone"] = model.backbone.identity
    ck.save_adapters(out, model.adapter_state(), meta)
    return out


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(argv: list[str]) -> tuple[tuple[float, float], str]:
    """((wall s, CPU s), stdout) of one CLI command in a fresh Python. The CPU time is what a
    shared, busy machine cannot inflate much; the wall time is what a user waits."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    t0, c0 = time.perf_counter(), _cpu()
    done = subprocess.run(
        [sys.executable, "-m", "aaclip.cli", *argv], env=env, capture_output=True, text=True
    )
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    if done.returncode:
        sys.exit(f"{' '.join(argv[:1])} failed: {done.stderr.strip()}")
    return (wall, cpu), done.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=ROOT / "data/synthetic")
    p.add_argument("--normals", type=int, default=200)
    p.add_argument("--images", type=int, default=100)
    args = p.parse_args()
    data = args.data.resolve()
    if not (data / "train.jsonl").is_file():
        sys.exit(f"{data}: no embedded dataset; run `aaclip prepare synthetic` first")
    records = [json.loads(x) for f in ("train", "test") for x in (data / f"{f}.jsonl").open()]
    normals = [r for r in records if r["label"] == 0][: args.normals]
    tests = [json.loads(x) for x in (data / "test.jsonl").open()][: args.images]
    if len(normals) < args.normals or len(tests) < args.images:
        sys.exit(f"{data}: only {len(normals)} normal and {len(tests)} test images")
    with tempfile.TemporaryDirectory(prefix="aaclip-bench-") as tmp:
        scratch = Path(tmp)
        ckpt = _checkpoint(scratch)
        rec = scratch / "normals.jsonl"
        rel = [os.path.relpath(data / r["image_path"], scratch) for r in normals]
        rec.write_text("".join(json.dumps({**r, "image_path": p}) + "\n"
                               for r, p in zip(normals, rel, strict=True)))  # fmt: skip
        folder = scratch / "images"
        folder.mkdir()
        for i, r in enumerate(tests):
            (folder / f"{i:03d}_{Path(r['image_path']).name}").symlink_to(data / r["image_path"])
        c, out = _timed(["calibrate", "--checkpoint", str(ckpt), "--normal", str(rec)])
        print(out.strip())
        cls = json.loads(Path(str(ckpt) + ".calibration.json").read_text())["classes"]
        name = next(iter(cls))
        base = ["predict", "--checkpoint", str(ckpt), "--class-name", name, str(folder)]
        p1, _ = _timed([*base, "--out", str(scratch / "p1")])
        p2, _ = _timed([*base, "--out", str(scratch / "p2"), "--no-overlays"])
        one, _ = _timed(["predict", "--checkpoint", str(ckpt), "--class-name", name,
                         "--out", str(scratch / "p3"), str(next(folder.iterdir()))])  # fmt: skip
    rows = [
        (f"calibrate, {args.normals} normal images ({len(cls)} classes)", c, args.normals),
        (f"predict, {args.images} images, overlays + masks", p1, args.images),
        (f"predict, {args.images} images, --no-overlays (masks)", p2, args.images),
        ("predict, 1 image, overlay + mask", one, 1),
    ]
    which = RUN_CHECKPOINT.name if RUN_CHECKPOINT.is_file() else "untrained"
    print(f"\nsmoke checkpoint {which}, CPU, 1 thread, whole commands (start-up included):")
    print(f"  {'':<52} {'wall':>7} {'CPU':>7}")
    for what, (wall, cpu), _ in rows:
        print(f"  {what:<52} {wall:6.1f}s {cpu:6.1f}s")
    print(f"  (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
