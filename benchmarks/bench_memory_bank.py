"""Benchmark of aaclip.memory: the few-shot nearest-neighbour map on random tokens (not a test).

Default: MVFA at 240 px on ViT-L-14-336 (17x17 grid, 290 tokens per image with CLS), a k=16
bank (16 normal supports x11 = 176 images, 51,040 tokens per level), 4 levels, width 1024
(``--width 768`` for MVFA's adapter tokens). Reports the time to fit the bank and the time
per test image of ``MemoryBank.anomaly_map`` (distances for every level, upsampled to
240 and summed), best of ``--repeats``. Pure compute: random tensors stand in for features.

Usage: ``python benchmarks/bench_memory_bank.py [--batch 8] [--shots 16] [--width 1024]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aaclip.memory import CHUNK_ELEMENTS, MemoryBank  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8, help="test images per call")
    p.add_argument("--shots", type=int, default=16, help="k: the bank holds 11k images")
    p.add_argument("--grid", type=int, default=17, help="token grid side (240 px / 14)")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--size", type=int, default=240, help="map size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--chunk-elements", type=int, default=CHUNK_ELEMENTS)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n_tokens = args.grid**2 + 1
    bank_images = 11 * args.shots
    g = torch.Generator(device=device).manual_seed(0)

    def rand(n: int) -> torch.Tensor:
        return torch.randn(n, n_tokens, args.width, generator=g, device=device)

    t0 = time.perf_counter()
    bank = MemoryBank(
        [rand(bank_images) for _ in range(args.levels)], chunk_elements=args.chunk_elements
    )
    fit_s = time.perf_counter() - t0
    queries = [rand(args.batch) for _ in range(args.levels)]
    bank.anomaly_map(queries, args.size)  # warm-up
    times = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        bank.anomaly_map(queries, args.size)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    per_image = 1000 * min(times) / args.batch
    print(
        f"device {device} ({torch.get_num_threads()} threads), {args.levels} levels, "
        f"bank {bank_images} images x {n_tokens} tokens = {bank.sizes()[0]:,} per level, "
        f"width {args.width}, queries {args.batch} x {n_tokens - 1} tokens"
    )
    print(f"fit: {fit_s:.2f} s; map: {per_image:.1f} ms per image (best of {args.repeats})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
