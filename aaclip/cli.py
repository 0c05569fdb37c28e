"""`aaclip methods | prepare | train | test | predict | import-released | protocol | bench`: thin
wrappers."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from aaclip.config import ExperimentConfig, apply_overrides, preset

CONVERTERS = ("synthetic", "mvtec", "mpdd", "visa", "btad", "bmad", "colon", "mvfa")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by inputs: one line, exit status 2, no traceback (AACLIP_DEBUG=1 shows it)."""
    from aaclip.backbone import WeightsNotFoundError
    from aaclip.checkpoints import CheckpointMismatchError
    from aaclip.data import RecordError
    from aaclip.methods import UnknownMethodError
    from aaclip.train import TrainingDivergedError

    errors: list[type[BaseException]] = [
        WeightsNotFoundError,
        CheckpointMismatchError,
        RecordError,
        TrainingDivergedError,
        UnknownMethodError,
        FileNotFoundError,
        ValueError,
    ]
    try:
        from data_prep._common import LayoutError

        errors.append(LayoutError)
    except ImportError:
        pass
    return tuple(errors)


def _config(args: argparse.Namespace) -> ExperimentConfig:
    if args.config:
        cfg = ExperimentConfig.load(args.config)
        if args.method and args.method != cfg.method:
            raise ValueError(
                f"{args.config}: a {cfg.method} config; --method {args.method} differs"
            )
    else:
        cfg = preset(args.profile, args.method or "aaclip")
    overrides = list(args.set or [])
    if getattr(args, "weights", None):
        overrides.append(f"backbone.weights={args.weights}")
    return apply_overrides(cfg, overrides)


def cmd_prepare(args: argparse.Namespace, rest: list[str]) -> int:
    module = importlib.import_module(f"data_prep.{args.dataset}")
    sys.argv = [f"data_prep.{args.dataset}", *rest]
    result = module.main()
    return int(result or 0)


def cmd_methods(args: argparse.Namespace) -> int:
    from aaclip.methods import METHODS

    width = max(map(len, METHODS))
    for name, cls in METHODS.items():
        stages = ", ".join(s.name for s in cls.schedule(cls.Config())) or "no training"
        print(f"{name:<{width}}  {cls.summary}")
        print(f"{'':<{width}}  stages: {stages}; presets: {', '.join(sorted(cls.PRESETS))}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from aaclip.train import train

    cfg = _config(args)
    result = train(cfg, args.run, device=args.device, resume=not args.no_resume)
    print(f"trained: {len(result.checkpoints)} new checkpoints in {result.run_dir}/checkpoints")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from aaclip import protocols, runs
    from aaclip.evaluate import evaluate
    from aaclip.results import to_markdown

    run = Path(args.run)
    if (run / "config.json").is_file():
        cfg = ExperimentConfig.load(run / "config.json")
        if args.method and args.method != cfg.method:
            raise ValueError(f"{run}: a {cfg.method} run; --method {args.method} differs")
        cfg = apply_overrides(cfg, list(args.set or []))
    else:
        cfg = _config(args)
    trains = bool(runs.last_stage(cfg)[0])
    if args.checkpoint:
        ckpts = [Path(c) for c in args.checkpoint]
    elif not trains:
        ckpts = []  # a training-free method (the CLIP baseline)
    elif args.epochs:
        stage = runs.last_stage(cfg)[0]
        ckpts = [runs.checkpoint_path(run, stage, int(e)) for e in args.epochs.split(",")]
    elif args.select_on:
        ckpts = [protocols.select_on_validation(cfg, run, args.select_on)]
        print(f"selected on {args.select_on}: {ckpts[0].name}")
    elif args.select_on_test:
        ckpts = runs.stage_checkpoints(run, cfg)
    else:
        ckpts = [runs.final_checkpoint(run, cfg)]
    if len(ckpts) > 1 and not args.select_on_test:
        print("note: several checkpoints are scored side by side; none is selected on the test set")
    table = evaluate(
        cfg, ckpts, run / "eval", device=args.device, selected_on_test=args.select_on_test
    )
    if args.select_on_test:
        best = protocols.select_epoch(table)
        print(f"SELECTED ON THE TEST SET (optimistic): {best}")
        table = table[table["checkpoint"] == best]
    means = table[table["class_name"] == "mean"].drop(columns=["class_name"])
    print(to_markdown(means))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from aaclip.predict import predict_files

    csv_path = predict_files(
        args.checkpoint,
        args.images,
        args.description,
        args.out,
        domain=args.domain,
        weights=args.weights,
        device=args.device,
    )
    print(f"wrote {csv_path} and overlays in {csv_path.parent / 'overlays'}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from aaclip import checkpoints as ck
    from aaclip.methods import create_method
    from aaclip.methods.aaclip import load_released

    cfg = _config(args)
    model = create_method(cfg, "cpu")
    if cfg.method == "aaclip":
        load_released(model, args.text, args.image)
        stage, files = (2 if args.image else 1), [args.text, args.image]
    else:  # one released file (MVFA-AD: ckpt/{few-shot,zero-shot}/<Obj>.pth)
        if not args.released:
            raise ValueError(f"import-released --method {cfg.method}: give --released FILE")
        model.import_released(args.released)
        stage, files = len(model.stages()), [args.released]
    meta = {
        "method": model.name,
        "stage": stage,
        "epoch": None,
        "imported_from": [str(p) for p in files if p],
        "backbone": model.backbone.identity,
        "config": cfg.to_dict(),
    }
    ck.save_adapters(args.out, model.adapter_state(), meta)
    print(f"wrote {args.out} (use it with `aaclip test --checkpoint` or `aaclip predict`)")
    return 0


def cmd_protocol(args: argparse.Namespace) -> int:
    from aaclip.medical import run_grid
    from aaclip.results import to_markdown

    result = run_grid(
        args.method or "mvfa",
        shots=args.shots,
        profile=args.profile,
        out_dir=args.out,
        runs_dir=args.runs,
        data_root=args.data,
        sets=args.sets,
        pixel_sets=args.pixel_sets,
        overrides=list(args.set or []),
        device=args.device,
        workers=args.workers,
    )
    print(to_markdown(result.table))
    print(f"wrote {result.out_dir}/table.{{csv,md}} and grid.csv in {result.wall_time_s:.0f} s")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from aaclip.bench import bench_table, run_bench

    row = run_bench(
        method=args.method or "aaclip",
        backbone=args.backbone,
        image_size=args.image_size,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        steps=args.steps,
        out_dir=args.out,
        metrics=not args.no_metrics,
        weights=args.weights,
        metrics_n=args.metrics_n,
        train=not args.no_train,
        warmup=args.warmup,
    )
    print(bench_table(row))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aaclip", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def method_option(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--method", help="a registered method (default aaclip; `aaclip methods`)")

    def experiment(sp: argparse.ArgumentParser) -> None:
        method_option(sp)
        sp.add_argument("--profile", default="smoke", help="preset: smoke | paper")
        sp.add_argument("--config", help="a config JSON (overrides --profile)")
        sp.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="override, e.g. --set model.stage2_epochs=15 (repeatable)",
        )
        sp.add_argument("--weights", help="local CLIP weights file (else $AACLIP_WEIGHTS)")
        sp.add_argument("--device", help="cpu | cuda (default: cuda when available)")

    sub.add_parser("methods", help="list the registered methods, their stages and presets")

    sp = sub.add_parser("prepare", help="build the synthetic set or convert a raw dataset tree")
    sp.add_argument("dataset", choices=CONVERTERS)

    sp = sub.add_parser("train", help="train every stage of a method (resumes by default)")
    experiment(sp)
    sp.add_argument("--run", required=True, help="run folder")
    sp.add_argument("--no-resume", action="store_true")

    sp = sub.add_parser("test", help="evaluate a run's checkpoint on its test sets")
    experiment(sp)
    sp.add_argument("--run", required=True)
    sp.add_argument("--checkpoint", action="append", help="explicit checkpoint(s)")
    sp.add_argument("--epochs", help="comma-separated last-stage epochs, scored in one pass")
    sp.add_argument(
        "--select-on", metavar="VAL.jsonl", help="choose the last-stage epoch on this split"
    )
    sp.add_argument(
        "--select-on-test",
        action="store_true",
        help="choose the epoch on the test set (optimistic; every table it writes is marked)",
    )

    sp = sub.add_parser("predict", help="heat maps and scores for your own images")
    sp.add_argument("--checkpoint", required=True)
    sp.add_argument("--description", required=True, help="what the images show, e.g. 'bottle'")
    sp.add_argument("--domain", default="industrial", choices=["industrial", "medical"])
    sp.add_argument("--out", default="predictions")
    sp.add_argument("--weights")
    sp.add_argument("--device")
    sp.add_argument("images", nargs="+", help="image files and/or folders")

    sp = sub.add_parser(
        "import-released",
        help="convert the authors' files: AA-CLIP text/image adapters, MVFA-AD --released",
    )
    experiment(sp)
    sp.add_argument("--text", help="text_adapter.pth (stage 1)")
    sp.add_argument("--image", help="image_adapter_N.pth (stage 2)")
    sp.add_argument("--released", help="MVFA-AD: ckpt/{few-shot,zero-shot}/<Obj>.pth")
    sp.add_argument("--out", required=True, help="our .safetensors checkpoint to write")

    sp = sub.add_parser(
        "protocol", help="a whole protocol grid for a method, one table beside published"
    )
    sp.add_argument("name", choices=["mvfa"], help="mvfa: the six medical sets of MVFA-AD")
    method_option(sp)
    sp.add_argument("--profile", default="smoke", help="the method's preset: smoke | paper")
    sp.add_argument("--shots", default="0,2,4,8,16", help="k, comma-separated; 0: zero-shot")
    sp.add_argument("--sets", help="set folders (default all six), e.g. Brain,Chest")
    sp.add_argument(
        "--pixel-sets", help="sets scored with pixel metrics (default Brain,Liver,Retina_RESC)"
    )
    sp.add_argument("--data", help="folder holding <Obj>_AD (smoke: data/synthetic/mvfa)")
    sp.add_argument("--out", help="tables (default results/protocol/<method>-<profile>)")
    sp.add_argument("--runs", help="run folders (default runs/protocol/<method>-<profile>)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override every run")
    sp.add_argument("--workers", type=int, default=1, help="runs in parallel (CPU)")
    sp.add_argument("--device", help="cpu | cuda (default: cuda when available)")

    sp = sub.add_parser("bench", help="throughput, latency and peak memory")
    method_option(sp)
    sp.add_argument("--backbone", default="ViT-L-14-336")
    sp.add_argument("--image-size", type=int, default=518)
    sp.add_argument("--batch-size", type=int, default=16)
    sp.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    sp.add_argument("--steps", type=int, default=5)
    sp.add_argument("--device")
    sp.add_argument("--weights")
    sp.add_argument("--out", default="results/bench")
    sp.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    sp.add_argument("--no-train", action="store_true", help="time inference only")
    sp.add_argument("--no-metrics", action="store_true", help="skip timing the metrics")
    sp.add_argument("--metrics-n", type=int, default=1725, help="maps of 518² for the metrics")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.getLogger().setLevel(logging.ERROR)  # open_clip logs "random init" at WARNING
    parser = build_parser()
    if argv[:1] == ["prepare"]:
        args, rest = parser.parse_known_args(argv)
    else:
        args, rest = parser.parse_args(argv), []
    handlers = {
        "methods": cmd_methods,
        "train": cmd_train,
        "test": cmd_test,
        "predict": cmd_predict,
        "bench": cmd_bench,
        "import-released": cmd_import,
        "protocol": cmd_protocol,
    }
    try:
        if args.command == "prepare":
            return cmd_prepare(args, rest)
        return handlers[args.command](args)
    except _user_errors() as err:
        if os.environ.get("AACLIP_DEBUG"):  # developers: the full traceback
            raise
        print(f"aaclip: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
