"""CPU ms per image: ClipMPCAD's MADFF adapter vs MVFA-AD's adapter at 240 px.

ViT-L-14-336 widths (vision 1024, joint 768), 240 px -> N = 290 tokens, batch 1, fp32, no
grad, random weights. One adapter call, and the 8 calls of an image (seg + det at 4 levels);
MADFF in both modes. Median of `--repeat` timed calls after warm-up.

Run: PYTHONPATH=. .venv/bin/python benchmarks/bench_madff.py [--threads 1] [--repeat 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from aaclip.methods.clipmpcad import MADFF
from aaclip.methods.mvfa import MVFAAdapter

N, C, E = 290, 1024, 768


def median_ms(module: torch.nn.Module, x: torch.Tensor, repeat: int) -> float:
    with torch.no_grad():
        for _ in range(3):
            module(x)
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(1, N, C)
    blocks = {
        "MVFA adapter": MVFAAdapter(C, E),
        "MADFF sequence": MADFF(C, E, "sequence"),
        "MADFF tokenwise": MADFF(C, E, "tokenwise"),
    }
    print(f"CPU, {args.threads} thread(s), torch {torch.__version__}, x = (1, {N}, {C}), fp32")
    base = None
    for name, block in blocks.items():
        ms = median_ms(block.eval(), x, args.repeat)
        base = base or ms
        params = sum(p.numel() for p in block.parameters())
        print(
            f"{name:<16} {ms:7.2f} ms/adapter  {8 * ms:7.1f} ms/image (8 adapters)  "
            f"x{ms / base:.2f}  {params:,} params"
        )


if __name__ == "__main__":
    main()
