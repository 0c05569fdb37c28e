"""Scoring several checkpoints in one pass vs one pass each (prints the figures).

    python benchmarks/bench_eval_pass.py [--data data/synthetic] [--size 128] [--n 3]

Builds the embedded dataset if needed and `n` checkpoints of the smoke model with different
random adapters, then times `evaluate` on all of them at once and on each alone.
`--upscale 1024` first rewrites the test images and masks at 1024 px, so that decoding costs
what an MVTec image costs (the part of the work that one pass shares).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from aaclip import checkpoints as ck
from aaclip.config import apply_overrides, preset
from aaclip.evaluate import evaluate
from aaclip.methods import create_method


def upscaled(cfg, out: Path, size: int):
    """A copy of the config's test sets with every image and mask resized to `size` px."""
    from PIL import Image

    from aaclip import data

    files = []
    for i, records_file in enumerate(cfg.data.test_records):
        root = Path(records_file).parent
        records = data.load_records(records_file, require_masks=False)
        for r in records:
            for rel, mode in ((r.image_path, Image.BICUBIC), (r.mask_path, Image.NEAREST)):
                if rel and not (out / rel).is_file():
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    Image.open(root / rel).resize((size, size), mode).save(out / rel)
        data.write_records(out / f"test{i}.jsonl", records)
        files.append(str(out / f"test{i}.jsonl"))
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, test_records=tuple(files)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", type=Path, default=Path("data/synthetic"))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--backbone", default="aaclip-tiny")
    p.add_argument("--upscale", type=int, default=0, help="rewrite test images at this size")
    args = p.parse_args()
    if not (args.data / "dataset.json").is_file():
        from data_prep.synthetic import build

        build(args.data)
    cfg = apply_overrides(
        preset("smoke", data_root=str(args.data)),
        [f"backbone.image_size={args.size}", f"backbone.name={args.backbone}"],
    )
    tmp = Path(tempfile.mkdtemp())
    if args.upscale:
        cfg = upscaled(cfg, tmp / "big", args.upscale)
    ckpts = []
    for i in range(args.n):
        cfg.train.seed = i
        model = create_method(cfg, torch.device("cpu"))
        path = tmp / f"ckpt{i}.safetensors"
        meta = {"method": model.name, "stage": 2, "backbone": model.backbone.identity,
                "config": cfg.to_dict()}  # fmt: skip
        ck.save_adapters(path, model.adapter_state(), meta)
        ckpts.append(path)
    for aupro in (False, True):
        t0 = time.perf_counter()
        evaluate(cfg, ckpts, tmp / "together", progress=False, aupro=aupro)
        together = time.perf_counter() - t0
        t0 = time.perf_counter()
        for c in ckpts:
            evaluate(cfg, [c], tmp / c.stem, progress=False, aupro=aupro)
        apart = time.perf_counter() - t0
        print(
            f"{args.backbone} @ {args.size}px, images {args.upscale or 'as built'} px, "
            f"{args.n} checkpoints, aupro={aupro}: "
            f"one pass {together:.1f} s, {args.n} single passes {apart:.1f} s "
            f"(ratio {together / apart:.2f})"
        )


if __name__ == "__main__":
    main()
