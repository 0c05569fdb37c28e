"""`aaclip methods | config | prepare | train | test | calibrate | predict | export |
import-released | protocol | bench | grid`: thin wrappers."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from aaclip import runtime
from aaclip.config import ExperimentConfig, apply_overrides, preset
from aaclip.fileio import check_writable, write_error
from aaclip.results import SCRATCH

CONVERTERS = ("synthetic", "mvtec", "mpdd", "visa", "btad", "bmad", "colon", "mvfa")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by inputs: one line, exit status 2, no traceback (AACLIP_DEBUG=1 shows it)."""
    from aaclip.backbone import WeightsNotFoundError
    from aaclip.checkpoints import CheckpointMismatchError
    from aaclip.data import RecordError
    from aaclip.methods import UnknownMethodError
    from aaclip.train import RunFolderError, TrainingDivergedError

    errors: list[type[BaseException]] = [
        WeightsNotFoundError,
        CheckpointMismatchError,
        RecordError,
        TrainingDivergedError,
        RunFolderError,
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


def _absolute_data(cfg: ExperimentConfig) -> ExperimentConfig:
    """Data paths made absolute (against the current folder), so a run's config.json works
    from any folder (`aaclip test --run /abs/path`)."""
    d = cfg.data
    d.train_records = str(Path(d.train_records).expanduser().absolute())
    d.test_records = tuple(str(Path(p).expanduser().absolute()) for p in d.test_records)
    return cfg


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
    return _absolute_data(apply_overrides(cfg, overrides))


def cmd_prepare(args: argparse.Namespace, rest: list[str]) -> int:
    module = importlib.import_module(f"data_prep.{args.dataset}")
    result = module.main([*args.converter_args, *rest])  # `--help` shows the converter's options
    return int(result or 0)


def cmd_methods(args: argparse.Namespace) -> int:
    from aaclip.methods import METHODS

    width = max(map(len, METHODS))
    for name, cls in METHODS.items():
        stages = ", ".join(s.name for s in cls.schedule(cls.Config())) or "no training"
        print(f"{name:<{width}}  {cls.summary}")
        print(f"{'':<{width}}  stages: {stages}; presets: {', '.join(sorted(cls.PRESETS))}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from aaclip.config import describe_settings

    cfg = _config(args)
    rows = describe_settings(cfg)
    width = max(len(k) for k, _, _ in rows)
    print(f"# {cfg.method}, profile {cfg.profile}: every --set KEY=VALUE")
    for key, value, meaning in rows:
        shown = json.dumps(value) if not isinstance(value, str) else value
        print(f"{key:<{width}}  {shown}" + (f"  # {meaning}" if meaning else ""))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from aaclip.train import train

    cfg = _config(args)
    check_writable(args.run, "run folder")
    try:
        result = train(cfg, args.run, device=args.device, fresh=args.fresh or args.no_resume)
    except KeyboardInterrupt:
        import torch

        path = Path(args.run) / "resume.pt"
        state = torch.load(path, weights_only=True) if path.is_file() else None
        where = f"stage {state['stage']} after epoch {state['epoch']}" if state else "the start"
        print(f"aaclip: interrupted; the same command resumes from {where}", file=sys.stderr)
        return INTERRUPTED
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
        overrides = list(args.set or [])
        if args.weights:
            overrides.append(f"backbone.weights={args.weights}")
        cfg = apply_overrides(cfg, overrides)
    else:
        cfg = _config(args)
    trains = bool(runs.last_stage(cfg)[0])
    if trains and not args.checkpoint and not run.is_dir():
        raise FileNotFoundError(f"--run {run}: no such run folder (train it with `aaclip train`)")
    check_writable(run / "eval", "evaluation folder")
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
    for name in dict.fromkeys(table["checkpoint"]):
        beside = run / "eval" / str(name) / "beside_published.md"
        if cfg.profile == "paper" and beside.is_file():
            print(f"beside the published numbers: {beside}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import csv

    check_writable(args.out, "--out")
    if args.model:  # an export: its class text, domain and calibration are fixed
        from aaclip.deploy import predict_model

        if args.description or args.domain or args.class_name or args.calibration:
            raise ValueError(
                f"{args.model}: an export's class, description, domain and calibration are "
                "fixed; drop --class-name/--description/--domain/--calibration (or export again)"
            )
        csv_path = predict_model(
            args.model,
            args.images,
            args.out,
            runtime=args.runtime,
            weights=args.weights,
            device=args.device,
            overlays=not args.no_overlays,
        )
    else:
        if args.runtime:
            raise ValueError("--runtime applies to --model (an export)")
        from aaclip.predict import predict_files

        csv_path = predict_files(
            args.checkpoint,
            args.images,
            args.description,
            args.out,
            domain=args.domain,
            weights=args.weights,
            device=args.device,
            class_name=args.class_name,
            overlays=not args.no_overlays,
            calibration=args.calibration,
        )
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    print(_predict_table(rows, shown=PREDICT_ROWS))
    out = csv_path.parent
    wrote = [str(csv_path)]
    if not args.no_overlays:
        wrote.append(f"{len(rows)} overlay{'s' * (len(rows) > 1)} in {out / 'overlays'}")
    masks = sum(bool(r.get("mask")) for r in rows)
    if masks:
        wrote.append(f"{masks} mask{'s' * (masks > 1)} in {out / 'masks'}")
    print("wrote " + ", ".join(wrote))
    return 0


PREDICT_ROWS = 20  # rows printed; every row is in scores.csv


def cmd_export(args: argparse.Namespace) -> int:
    from aaclip.export import export_checkpoint

    check_writable(args.out, "--out")
    manifest = export_checkpoint(
        args.checkpoint,
        args.class_name,
        args.out,
        description=args.description,
        domain=args.domain,
        backbone=args.backbone,
        onnx=args.onnx,
        weights=args.weights,
        calibration=args.calibration,
    )
    mode = json.loads(manifest.read_text()).get("mode", "zero-shot")
    folder = manifest.parent
    print(f"wrote {folder} ({mode}; use it with `aaclip predict --model {folder}`)")
    return 0


def _predict_table(rows: list[dict], shown: int) -> str:
    """image, class, mode, raw score, and when calibrated the normalised score and label."""
    calibrated = any(r.get("score") for r in rows)
    mode = ["mode"] if any(r.get("mode") for r in rows) else []  # zero-shot / few-shot k=N
    cols = ["image", "class", *mode, "raw_score"] + (["score", "label"] if calibrated else [])
    if any(r.get("true_label") for r in rows):
        cols.append("true_label")
    head = {"raw_score": "raw score", "true_label": "truth"}
    width = {c: max(len(head.get(c, c)), *(len(r.get(c, "")) for r in rows[:shown])) for c in cols}
    lines = ["  ".join(f"{head.get(c, c):<{width[c]}}" for c in cols).rstrip()]
    for r in rows[:shown]:
        lines.append("  ".join(f"{r.get(c, '') or '–':<{width[c]}}" for c in cols).rstrip())
    if len(rows) > shown:
        lines.append(f"… and {len(rows) - shown} more in scores.csv")
    return "\n".join(lines)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from aaclip.calibrate import calibrate_checkpoint, summary_lines
    from aaclip.calibration import calibration_path

    out = Path(args.out) if args.out else calibration_path(args.checkpoint)
    where = "--out folder" if args.out else "the checkpoint's folder (or give --out FILE)"
    check_writable(out.parent, where)
    run = calibrate_checkpoint(
        args.checkpoint,
        args.normal,
        args.anomalous,
        fpr=args.fpr,
        class_name=args.class_name,
        description=args.description,
        domain=args.domain,
        device=args.device,
        weights=args.weights,
        out=args.out,
    )
    print("\n".join(summary_lines(run)))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from aaclip import checkpoints as ck
    from aaclip.methods import create_method

    cfg = _config(args)
    check_writable(Path(args.out).parent, "--out")
    model = create_method(cfg, "cpu")
    # The method says which files it takes (`RELEASED_FILES`) and reads them.
    stage, files = model.load_released(
        {"text": args.text, "image": args.image, "released": args.released}
    )
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
    from aaclip.medical import default_folders, run_grid
    from aaclip.results import to_markdown

    method = args.method or PROTOCOL_METHOD
    out, runs = default_folders(method, args.profile, args.out, args.runs)
    check_writable(out, "--out")
    check_writable(runs, "--runs")
    result = run_grid(
        method,
        shots=args.shots,
        profile=args.profile,
        out_dir=out,
        runs_dir=runs,
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


PROTOCOL_METHOD = "mvfa"  # `aaclip protocol mvfa`: the protocol's own method by default


def cmd_bench(args: argparse.Namespace) -> int:
    from aaclip.bench import bench_table, run_bench

    check_writable(args.out, "--out")
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
        onnx=args.onnx,
    )
    print(bench_table(row))
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from aaclip import grid

    if not args.list:
        check_writable(args.out, "--out")
    return grid.main(args)


def build_parser() -> argparse.ArgumentParser:
    from aaclip import __version__

    p = argparse.ArgumentParser(prog="aaclip", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def method_option(sp: argparse.ArgumentParser, default: str = "aaclip") -> None:
        sp.add_argument(
            "--method", help=f"a registered method (default {default}; `aaclip methods`)"
        )

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

    sp = sub.add_parser("config", help="print every --set key of a profile with its value")
    experiment(sp)

    sp = sub.add_parser("prepare", help="build the synthetic set or convert a raw dataset tree")
    sp.add_argument("dataset", choices=CONVERTERS)
    sp.add_argument(
        "converter_args",
        nargs=argparse.REMAINDER,
        metavar="...",
        help="the converter's options (aaclip prepare NAME --help lists them)",
    )

    sp = sub.add_parser("train", help="train every stage of a method (resumes by default)")
    experiment(sp)
    sp.add_argument("--run", required=True, help="run folder")
    sp.add_argument(
        "--fresh", action="store_true", help="start over: move an existing run in --run aside"
    )
    sp.add_argument("--no-resume", action="store_true", help="same as --fresh")

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

    def what_images_show(
        sp: argparse.ArgumentParser, default_domain: str | None, class_help: str
    ) -> None:
        which = sp.add_mutually_exclusive_group()
        which.add_argument("--class-name", help=class_help)
        which.add_argument("--description", help="what the images show, e.g. 'bottle'")
        sp.add_argument(
            "--domain",
            default=default_domain,
            choices=["industrial", "medical"],
            help="scoring rules (default: "
            + (default_domain or "the calibration's, else a few-shot checkpoint's, else industrial")
            + ")",
        )

    sp = sub.add_parser(
        "calibrate",
        help="thresholds at a false-positive rate from normal images, stored with the checkpoint",
        description="Score normal images with the checkpoint's raw outputs and store, per "
        "class, an image and a pixel threshold at --fpr and the normalisation (threshold "
        "-> 0.5) in <checkpoint>.calibration.json (or --out FILE). Anomalous images only add "
        "the TPR.",
    )
    sp.add_argument("--checkpoint", required=True)
    sp.add_argument(
        "--normal",
        required=True,
        metavar="DIR_OR_RECORDS",
        help="a folder of normal images (one class) or a records .jsonl (its label-0 records)",
    )
    sp.add_argument(
        "--anomalous",
        metavar="DIR_OR_RECORDS",
        help="anomalous images (a folder, or the label-1 records of a .jsonl, masks used)",
    )
    sp.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate")
    sp.add_argument(
        "--out",
        metavar="FILE",
        help="write the calibration here (default: <checkpoint>.calibration.json beside it); "
        "`predict --calibration FILE` reads it",
    )
    what_images_show(sp, None, "a folder's class; with records: keep this class only")
    sp.add_argument("--weights")
    sp.add_argument("--device")

    sp = sub.add_parser(
        "predict",
        help="scores, labels, masks and overlays for your own images",
        description="Score each image alone. With a calibration beside the checkpoint "
        "(`aaclip calibrate`) or given with --calibration: raw score, normalised score "
        "(threshold 0.5), label and mask; without: raw scores only. Output folders of "
        "earlier runs are never read as input.",
    )
    source = sp.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint")
    source.add_argument("--model", metavar="DIR", help="an `aaclip export` folder instead")
    what_images_show(sp, None, "the images' class: a calibrated class, or a name for the prompts")
    sp.add_argument(
        "--runtime", choices=["torch", "onnx"], help="--model: default onnx if it has one"
    )
    sp.add_argument("--out", default="predictions", help="output folder (never read as input)")
    sp.add_argument(
        "--calibration",
        metavar="FILE",
        help="--checkpoint: a calibration written with `calibrate --out` (default: beside it)",
    )
    sp.add_argument("--no-overlays", action="store_true", help="scores (and masks) only")
    sp.add_argument("--weights")
    sp.add_argument("--device")
    sp.add_argument(
        "images", nargs="+", help="image files, folders and/or records files (.jsonl: ground truth)"
    )

    sp = sub.add_parser(
        "export", help="one class of a checkpoint as a self-contained folder (+ ONNX)"
    )
    sp.add_argument("--checkpoint", required=True)
    sp.add_argument("--class-name", required=True, help="the class whose text is baked in")
    sp.add_argument("--description", help="text for the prompts (default: the class name)")
    sp.add_argument(
        "--domain",
        choices=["industrial", "medical"],
        help="scoring rules (default: a few-shot checkpoint's, else industrial)",
    )
    sp.add_argument("--out", required=True, help="a new folder")
    sp.add_argument(
        "--backbone",
        default="embed",
        choices=["embed", "reference"],
        help="embed the CLIP weights (default) or keep only their content hash",
    )
    sp.add_argument("--onnx", action="store_true", help="also write model.onnx (onnxruntime)")
    sp.add_argument(
        "--calibration",
        metavar="FILE",
        help="a calibration written with `calibrate --out` (default: the one beside it)",
    )
    sp.add_argument("--weights", help="local CLIP weights file (else $AACLIP_WEIGHTS)")

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
    method_option(sp, PROTOCOL_METHOD)
    sp.add_argument("--profile", default="smoke", help="the method's preset: smoke | paper")
    sp.add_argument("--shots", default="0,2,4,8,16", help="k, comma-separated; 0: zero-shot")
    sp.add_argument("--sets", help="set folders (default all six), e.g. Brain,Chest")
    sp.add_argument(
        "--pixel-sets", help="sets scored with pixel metrics (default Brain,Liver,Retina_RESC)"
    )
    sp.add_argument("--data", help="folder holding <Obj>_AD (smoke: data/synthetic/mvfa)")
    sp.add_argument(
        "--out",
        help="tables (default results/_scratch/protocol/<method>-<profile>, untracked; "
        "--out results/protocol/<method>-<profile> rewrites the tracked tables)",
    )
    sp.add_argument("--runs", help="run folders (default runs/protocol/<method>-<profile>)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override every run")
    sp.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1,
        help="runs in parallel, one thread each (default: every core)",
    )  # fmt: skip
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
    sp.add_argument(
        "--out",
        default=str(SCRATCH / "bench"),
        help="folder of bench.csv, rows appended (default untracked; --out results/bench "
        "appends to the tracked table)",
    )
    sp.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    sp.add_argument("--no-train", action="store_true", help="time inference only")
    sp.add_argument("--no-metrics", action="store_true", help="skip timing the metrics")
    sp.add_argument("--metrics-n", type=int, default=1725, help="maps of 518² for the metrics")
    sp.add_argument(
        "--onnx", action="store_true", help="also inference exported to ONNX, onnxruntime CPU"
    )

    from aaclip.grid import add_arguments

    add_arguments(sub.add_parser("grid", help="methods × protocols × shots × seeds as jobs"))
    return p


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line, `aaclip: warning: ...` (not Python's file:line + source line)."""
    text = " ".join(str(message).split())
    print(f"aaclip: warning: {text}", file=file if file is not None else sys.stderr)


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
        "config": cmd_config,
        "train": cmd_train,
        "test": cmd_test,
        "predict": cmd_predict,
        "export": cmd_export,
        "calibrate": cmd_calibrate,
        "bench": cmd_bench,
        "import-released": cmd_import,
        "grid": cmd_grid,
        "protocol": cmd_protocol,
    }
    runtime.use_thread_policy()  # one thread for the tiny backbones, every core otherwise
    quiet = os.environ.get("RANK", "0") != "0"  # under torchrun, rank 0 alone speaks
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            if getattr(args, "device", None):  # one line now, not a CUDA traceback later
                from aaclip.devices import parse_device

                parse_device(args.device)
            with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
                if args.command == "prepare":
                    return cmd_prepare(args, rest)
                return handlers[args.command](args)
    except _user_errors() as err:
        if os.environ.get("AACLIP_DEBUG"):  # developers: the full traceback
            raise
        return _refuse(f"aaclip: error: {err}", quiet)
    except OSError as err:  # an unwritable output, a full disk: one line naming the path
        line = write_error(err)
        if line is None or os.environ.get("AACLIP_DEBUG"):
            raise
        return _refuse(f"aaclip: error: {line}", quiet)
    except KeyboardInterrupt:
        if not quiet:
            print("aaclip: interrupted", file=sys.stderr)
        return INTERRUPTED


INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a program stopped by Ctrl-C


def _refuse(line: str, quiet: bool) -> int:
    """Print the one error line (rank 0 only under torchrun) and return status 2.

    Under torchrun the line also goes to the worker's error file, so the agent's failure
    report (torchrun prints one for any worker that exits non-zero) names it as the root
    cause instead of "To enable traceback see ..."; the other ranks wait a moment, so that
    rank 0 has printed the line before the agent stops the workers.
    """
    import time

    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        stamp = str(int(time.time()))
        info = {"py_callstack": line, "timestamp": stamp}
        data = {"message": {"message": line, "extraInfo": info}}
        with contextlib.suppress(OSError):
            Path(error_file).write_text(json.dumps(data))
    if quiet:
        time.sleep(1.0)
    else:
        print(line, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
