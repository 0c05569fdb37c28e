"""Benchmark of aaclip.metrics on a synthetic MVTec-size input (not a test).

Builds ``--n`` anomaly maps of ``--size``x``--size`` float32 (default: the 1,725 MVTec AD test
images at 518x518 = 463M pixels) with realistic masks (about half of the images anomalous,
a few blob regions of varied size, maps = upsampled patch-level scores correlated with the
masks plus noise) and reports, with wall-clock times and peak resident memory:

* ours: ``aupro`` alone and ``pixel_metrics`` (AUROC, AP, F1-max and AUPRO from one sort);
* references on the first ``--ref-n`` maps: scikit-learn AUROC / AP / F1 (from its PR
  curve) and a textbook AUPRO (one argsort of every pixel, skimage labelling, cumulative
  sums), plus a per-threshold loop AUPRO on ``--naive-n`` maps quantised to
  ``--naive-levels`` score levels;
* anomalib (>= 2.3) AUPRO, run by ``--anomalib-python`` (a separate scratch venv, never the
  project's) on the same maps saved to ``--save-dir`` as .npy; when the whole input does not
  fit in memory it is retried on the largest prefix that does.

Usage: ``python benchmarks/bench_metrics.py [--n 1725] [--size 518] [--anomalib-python P]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aaclip import metrics as M  # noqa: E402

GIB = 1024**3


# --------------------------------------------------------------------------- memory / timing


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (getrusage)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@contextmanager
def stage_peak() -> Iterator[dict[str, float]]:
    """Sample RSS every 20 ms while the block runs; yields a dict filled on exit."""
    out: dict[str, float] = {"start_gib": rss_bytes() / GIB}
    peak = [rss_bytes()]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], rss_bytes())

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - t0
        stop.set()
        thread.join()
        out["peak_gib"] = max(peak[0], rss_bytes()) / GIB


def timed(label: str, fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    with stage_peak() as info:
        value = fn()
    print(
        f"  {label:<44s} {info['seconds']:8.2f} s   RSS {info['start_gib']:.2f} -> peak "
        f"{info['peak_gib']:.2f} GiB",
        flush=True,
    )
    return value, info


# --------------------------------------------------------------------------- synthetic data


def make_mask(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A few blobs (rotated ellipses with wobbly borders) or thin scratches."""
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(1, 5))):
        cy, cx = rng.uniform(0.1, 0.9, 2) * size
        r_major = float(np.exp(rng.uniform(np.log(2.0), np.log(size / 4))))
        aspect = rng.uniform(0.08, 0.3) if rng.random() < 0.2 else rng.uniform(0.4, 1.0)
        angle = rng.uniform(0.0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dy * np.cos(angle) + dx * np.sin(angle)
        v = -dy * np.sin(angle) + dx * np.cos(angle)
        theta = np.arctan2(v, u)
        wobble = 1.0 + 0.25 * np.sin(3 * theta + rng.uniform(0, 6.3)) * rng.random()
        r_minor = max(r_major * aspect, 1.0)
        mask |= (u / r_major) ** 2 + (v / r_minor) ** 2 <= wobble**2
    return mask


def make_data(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size) float32 maps and bool masks, generated image by image."""
    rng = np.random.default_rng(seed)
    grid = max(size // 14, 2)  # ViT-L/14 patch grid (37 for 518)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    maps = np.empty((n, size, size), dtype=np.float32)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        if rng.random() < 0.5:
            masks[i] = make_mask(rng, size, yy, xx)
        coarse_mask = ndimage.zoom(masks[i].astype(np.float32), grid / size, order=1)
        coarse = rng.normal(0.0, 1.0, (grid, grid)) * rng.uniform(0.15, 0.35)
        coarse += rng.uniform(0.1, 1.2) * coarse_mask + rng.uniform(-0.1, 0.1)
        fine = ndimage.zoom(coarse.astype(np.float32), size / grid, order=1)[:size, :size]
        fine += 0.4 * masks[i] * rng.uniform(0.0, 1.0)
        fine += rng.normal(0.0, 0.05, (size, size)).astype(np.float32)
        maps[i] = fine
    return maps, masks


# --------------------------------------------------------------------------- references


def textbook_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """One argsort of every pixel, per-pixel FPR / PRO increments, cumulative sums."""
    from skimage.measure import label

    lab = np.zeros(masks.shape, dtype=np.int64)
    offset = 0
    for i in range(len(masks)):
        comp, n_comp = label(masks[i], connectivity=2, return_num=True)
        lab[i] = np.where(comp > 0, comp + offset, 0)
        offset += n_comp
    lab = lab.ravel()
    n_regions = offset
    sizes = np.bincount(lab, minlength=n_regions + 1).astype(np.float64)
    normal = lab == 0
    n_normal = int(normal.sum())
    pro_inc = np.where(normal, 0.0, 1.0 / (sizes[lab] * n_regions))
    order = np.argsort(maps.ravel(), kind="stable")[::-1]
    scores = maps.ravel()[order]
    fpr = np.cumsum(normal[order]) / n_normal
    pro = np.cumsum(pro_inc[order])
    last = np.append(np.flatnonzero(scores[1:] != scores[:-1]), scores.size - 1)
    fpr = np.concatenate([[0.0], fpr[last]])
    pro = np.concatenate([[0.0], pro[last]])
    i = int(np.searchsorted(fpr, fpr_limit, side="right"))
    xs, ys = list(fpr[:i]), list(pro[:i])
    if xs[-1] < fpr_limit:
        y_lim = pro[i - 1] + (pro[i] - pro[i - 1]) * (fpr_limit - fpr[i - 1]) / (
            fpr[i] - fpr[i - 1]
        )
        xs.append(fpr_limit)
        ys.append(y_lim)
    return float(np.trapezoid(ys, xs) / fpr_limit)


def naive_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Loop over every distinct threshold (use on quantised maps only)."""
    struct = np.ones((3, 3), dtype=bool)
    lab = np.zeros(masks.shape, dtype=np.int64)
    offset = 0
    for i in range(len(masks)):
        comp, n_comp = ndimage.label(masks[i], structure=struct)
        lab[i] = np.where(comp > 0, comp + offset, 0)
        offset += n_comp
    sizes = np.bincount(lab.ravel(), minlength=offset + 1)[1:]
    normal = lab == 0
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fprs.append(np.count_nonzero(pred & normal) / np.count_nonzero(normal))
        hit = np.bincount(lab[pred & ~normal], minlength=offset + 1)[1:]
        pros.append(float(np.mean(hit / sizes)))
        if fprs[-1] > fpr_limit:
            break  # every later point lies beyond the limit
    area = 0.0
    for k in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[k - 1], fprs[k], pros[k - 1], pros[k]
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < fpr_limit:
                y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
                area += (fpr_limit - x0) * (y0 + y_lim) / 2
            break
    return area / fpr_limit


def sklearn_pixel(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    s, y = maps.ravel(), masks.ravel()
    precision, recall, _ = precision_recall_curve(y, s)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return {
        "pixel_auroc": float(roc_auc_score(y, s)),
        "pixel_ap": float(average_precision_score(y, s)),
        "pixel_f1_max": float(f1.max()),
    }


# --------------------------------------------------------------------------- anomalib

ANOMALIB_CHILD = r"""
import json, resource, sys, time
import numpy as np
cap, n, maps_path, masks_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
import torch
import anomalib
from anomalib.metrics.aupro import _AUPRO
torch.set_num_threads(2)
maps = torch.from_numpy(np.array(np.load(maps_path, mmap_mode="r")[:n]))
masks = torch.from_numpy(np.array(np.load(masks_path, mmap_mode="r")[:n]))
t0 = time.perf_counter()
metric = _AUPRO(fpr_limit=0.3)
metric.update(maps, masks.to(torch.uint8))
value = float(metric.compute())
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT " + json.dumps({"aupro": value, "seconds": seconds, "peak_bytes": peak,
                              "version": anomalib.__version__, "n": n}))
"""


# anomalib 2.7 AUPRO holds about 65 bytes per pixel (int64 labels, float32 increments, an
# int64 argsort, sorted copies, cumulative sums) on top of about 1 GiB for torch itself;
# measured with this script on 50 and 150 maps of 518x518.
ANOMALIB_BYTES_PER_PIXEL = 65
ANOMALIB_BASE_BYTES = GIB


def run_anomalib(python: str, n: int, maps_path: Path, masks_path: Path, cap: int) -> dict:
    """Run anomalib's AUPRO in the scratch venv under an address-space cap."""
    proc = subprocess.run(
        [python, "-c", ANOMALIB_CHILD, str(cap), str(n), str(maps_path), str(masks_path)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"exit {proc.returncode}: {tail[0][:200]}", "n": n}


def bench_anomalib(args: argparse.Namespace, maps_path: Path, masks_path: Path) -> dict:
    """anomalib's AUPRO on the largest prefix of the saved input that fits in memory."""
    python = Path(args.anomalib_python)
    if not python.exists():
        print(f"anomalib: no scratch interpreter at {python}; skipped")
        return {"error": "not installed"}
    print(f"anomalib AUPRO (scratch venv {python}), input from {maps_path.parent}:")
    cap = int(available_bytes() - 1.5 * GIB)  # leave room for everything else on the machine
    pixels_per_map = args.size**2
    n = args.n
    res: dict[str, Any] = {"error": "nothing fitted"}
    while n >= 1:
        need = ANOMALIB_BASE_BYTES + ANOMALIB_BYTES_PER_PIXEL * n * pixels_per_map
        if need > cap:
            print(
                f"  {n} maps: needs about {need / GIB:.1f} GiB > {cap / GIB:.1f} GiB free; halving"
            )
        else:
            res = run_anomalib(str(python), n, maps_path, masks_path, cap)
            if "error" not in res:
                break
            print(f"  {n} maps failed ({res['error']}); halving")
        n //= 2
    if "error" in res:
        print(f"  anomalib failed: {res['error']}")
        return res
    maps = np.load(maps_path, mmap_mode="r")[:n]
    masks = np.load(masks_path, mmap_mode="r")[:n]
    ours, info = timed(f"ours aupro() on the same {n} maps", lambda: M.aupro(maps, masks))
    res.update(
        ours_same_input=ours, ours_seconds=info["seconds"], abs_diff=abs(ours - res["aupro"])
    )
    print(
        f"  anomalib {res['version']} on {n} maps: aupro {res['aupro']:.6f} in "
        f"{res['seconds']:.1f} s, peak RSS {res['peak_bytes'] / GIB:.2f} GiB; ours {ours:.6f}, "
        f"abs diff {res['abs_diff']:.2e}"
    )
    return res


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1725, help="number of maps")
    parser.add_argument("--size", type=int, default=518, help="map height and width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ref-n", type=int, default=200, help="maps for the references")
    parser.add_argument("--naive-n", type=int, default=20, help="maps for the loop reference")
    parser.add_argument("--naive-levels", type=int, default=200, help="score levels (loop ref)")
    parser.add_argument("--anomalib-python", default="/tmp/anomalib-venv/bin/python")
    parser.add_argument("--save-dir", default="/tmp/aaclip_bench")
    parser.add_argument("--skip-anomalib", action="store_true")
    args = parser.parse_args()

    n_px = args.n * args.size**2
    print(f"input: {args.n} maps of {args.size}x{args.size} = {n_px / 1e6:.1f}M pixels")
    (maps, masks), _ = timed("generate synthetic data", lambda: make_data(args.n, args.size, 0))
    n_regions = M.label_regions(masks)[1].size
    print(
        f"  anomalous images {int(masks.any(axis=(1, 2)).sum())}/{args.n}, anomalous pixels "
        f"{masks.mean() * 100:.2f}%, regions {n_regions}"
    )
    results: dict[str, Any] = {"n": args.n, "size": args.size, "pixels": n_px}

    print("ours (numpy, full input):")
    value, info = timed("aupro()", lambda: M.aupro(maps, masks))
    results["ours_aupro"] = {"value": value, **info}
    ours, info = timed("pixel_metrics() (AUROC+AP+F1+AUPRO)", lambda: M.pixel_metrics(maps, masks))
    results["ours_pixel_metrics"] = {**ours, **info}
    _, info = timed("pixel_metrics(aupro=False)", lambda: M.pixel_metrics(maps, masks, False))
    results["ours_pixel_metrics_no_aupro"] = info
    print("  values: " + ", ".join(f"{k}={v:.6f}" for k, v in ours.items()))
    print(f"  |aupro() - pixel_metrics()['pixel_aupro']| = {abs(value - ours['pixel_aupro']):.2e}")

    k = min(args.ref_n, args.n)
    sub_maps, sub_masks = maps[:k], masks[:k]
    print(f"references on the first {k} maps ({k * args.size**2 / 1e6:.1f}M pixels):")
    ours_sub, info_ours = timed(
        "ours pixel_metrics()", lambda: M.pixel_metrics(sub_maps, sub_masks)
    )
    skl, info_skl = timed(
        "sklearn AUROC + AP + PR-curve F1", lambda: sklearn_pixel(sub_maps, sub_masks)
    )
    text, info_text = timed("textbook argsort AUPRO", lambda: textbook_aupro(sub_maps, sub_masks))
    diffs = {key: abs(ours_sub[key] - skl[key]) for key in skl}
    diffs["pixel_aupro"] = abs(ours_sub["pixel_aupro"] - text)
    for key, d in diffs.items():
        print(f"  max abs diff {key:<14s} {d:.2e}")
    results["reference_subset"] = {
        "maps": k,
        "ours": {**ours_sub, **info_ours},
        "sklearn": {**skl, **info_skl},
        "textbook_aupro": {"value": text, **info_text},
        "abs_diff": diffs,
    }

    kq = min(args.naive_n, args.n)
    q_maps = (np.round(maps[:kq] * args.naive_levels) / args.naive_levels).astype(np.float32)
    q_masks = masks[:kq]
    print(f"per-threshold loop reference on {kq} maps quantised to {args.naive_levels} levels:")
    naive, info_naive = timed("loop AUPRO", lambda: naive_aupro(q_maps, q_masks))
    ours_q, info_q = timed("ours aupro()", lambda: M.aupro(q_maps, q_masks))
    print(f"  loop {naive:.6f} ours {ours_q:.6f} abs diff {abs(naive - ours_q):.2e}")
    results["naive_subset"] = {
        "maps": kq,
        "loop": {"value": naive, **info_naive},
        "ours": {"value": ours_q, **info_q},
        "abs_diff": abs(naive - ours_q),
    }

    if not args.skip_anomalib:
        save = Path(args.save_dir)
        save.mkdir(parents=True, exist_ok=True)
        maps_path, masks_path = save / "maps.npy", save / "masks.npy"
        np.save(maps_path, maps)
        np.save(masks_path, masks)
        del maps, masks, sub_maps, sub_masks, q_maps, q_masks  # free memory for anomalib
        results["anomalib"] = bench_anomalib(args, maps_path, masks_path)

    results["peak_rss_gib_getrusage"] = peak_rss_bytes() / GIB
    print(f"peak RSS of this process (getrusage): {results['peak_rss_gib_getrusage']:.2f} GiB")
    out = Path(args.save_dir) / "bench_metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float))
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
