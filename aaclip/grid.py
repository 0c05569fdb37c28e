"""The experiment grid: methods × protocols (× targets) × shots × seeds (× ablations) as
independent jobs, run in parallel local processes or as a Slurm job array (submitit).

Each job is one `experiment.run` (train, then evaluate the final checkpoint) in its own
folder `<grid>/<job name>/`, which ends with the job's run record `job.json` (its axes, its
config, wall time and per-target means) beside evaluate's own `eval/*/*/run.json`. A job
with a `job.json` is finished and skipped, so a killed grid picks up where it stopped (an
interrupted training resumes from its last finished epoch); a failed job leaves
`failed.json` (the error line and the traceback), is listed at the end and can be rerun alone
(`--only NAME`). `aggregate()` builds the long table of every finished job and the mean ± std
table over seeds (`results.mean_std`).

Protocols: `cross` trains on the config's training set and tests on all its test sets (one
job; `targets` keeps only the named test sets); `leave_one_out` (MVFA) is one job per target
of `sets`, trained on all the other sets. Ablations are names from a method's
`ablations(cfg)`; each method runs `base` plus the listed ablations it defines.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import re
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from aaclip import protocols, results
from aaclip.config import ExperimentConfig, apply_overrides, preset
from aaclip.fileio import atomic_write_text

PROTOCOLS = ("cross", "leave_one_out")
RECORD = "job.json"  # a finished job's run record
FAILED = "failed.json"
AXES = ["method", "ablation", "protocol", "shots", "seed"]


@dataclass
class Spec:
    """What the grid expands: a JSON file with these keys, or the `aaclip grid` flags."""

    methods: list[str] = field(default_factory=lambda: ["aaclip"])
    profile: str = "smoke"
    data_root: str | None = None  # passed to the presets (None: each preset's default)
    protocols: list[str] = field(default_factory=lambda: ["cross"])
    sets: dict[str, str] = field(default_factory=dict)  # leave_one_out: name -> records file
    targets: list[str] = field(default_factory=list)  # [] = every test set / every set
    shots: list[int | None] = field(default_factory=lambda: [None])  # None = full-shot
    seeds: list[int] = field(default_factory=lambda: [111])
    ablations: list[str] = field(default_factory=list)  # `base` always runs
    overrides: list[str] = field(default_factory=list)  # section.key=value, every job
    device: str | None = None
    slurm: dict[str, Any] = field(default_factory=dict)  # submitit parameters (engine slurm)

    @classmethod
    def load(cls, path: str | Path) -> Spec:
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a readable grid spec: {err}") from None
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(values, dict) or set(values) - known:
            extra = sorted(set(values) - known) if isinstance(values, dict) else values
            raise ValueError(f"{path}: unknown grid spec keys {extra}; known: {sorted(known)}")
        return cls(**values)


@dataclass(frozen=True)
class Job:
    """One point of the grid."""

    method: str
    ablation: str
    protocol: str
    target: str | None
    shots: int | None
    seed: int

    @property
    def name(self) -> str:
        target = f"-{_safe(self.target)}" if self.target else ""
        shots = "full" if self.shots is None else str(self.shots)
        return f"{self.method}_{self.ablation}_{self.protocol}{target}_{shots}shot_seed{self.seed}"

    def axes(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _safe(text: str) -> str:
    return re.sub(r"[^\w.-]+", "-", text)


def expand(spec: Spec) -> list[Job]:
    """Every job of a spec, in a fixed order (method, ablation, protocol, target, shots, seed)."""
    from aaclip.methods import method_class

    unknown = [p for p in spec.protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocols {unknown}; known: {', '.join(PROTOCOLS)}")
    ablations = {m: method_class(m).ablations(_base_config(spec, m).model) for m in spec.methods}
    nowhere = [a for a in spec.ablations if not any(a in abl for abl in ablations.values())]
    if nowhere:
        raise ValueError(f"ablations {nowhere} are defined by none of {spec.methods}")
    if "leave_one_out" in spec.protocols and not spec.sets:
        raise ValueError("protocol leave_one_out needs `sets` (name -> records file)")
    jobs = []
    for method in spec.methods:
        variants = ["base", *(a for a in spec.ablations if a in ablations[method])]
        for ablation in variants:
            for protocol in spec.protocols:
                targets = (spec.targets or list(spec.sets)) if protocol == "leave_one_out" else []
                for target in targets or [None]:
                    for shots in spec.shots:
                        for seed in spec.seeds:
                            jobs.append(Job(method, ablation, protocol, target, shots, seed))
    return jobs


def _base_config(spec: Spec, method: str) -> ExperimentConfig:
    """The method's preset with the spec's overrides: what every job of the method starts from."""
    root = {"data_root": spec.data_root} if spec.data_root else {}
    return apply_overrides(preset(spec.profile, method, **root), list(spec.overrides))


def job_config(spec: Spec, job: Job, folder: str | Path) -> ExperimentConfig:
    """The experiment config of one job (leave_one_out writes its merged training records)."""
    from aaclip.methods import method_class

    cfg = _base_config(spec, job.method)
    if job.ablation != "base":
        cfg = apply_overrides(cfg, method_class(job.method).ablations(cfg.model)[job.ablation])
    if job.protocol == "leave_one_out":
        cfg = protocols.leave_one_out(cfg, spec.sets, job.target, Path(folder) / job.name)
    elif spec.targets:
        cfg = _keep_tests(cfg, spec.targets)
    cfg = protocols.few_shot(cfg, job.shots)
    return apply_overrides(cfg, [f"train.seed={job.seed}"])


def _keep_tests(cfg: ExperimentConfig, targets: list[str]) -> ExperimentConfig:
    d = cfg.data
    missing = [t for t in targets if t not in d.test_datasets]
    if missing:
        raise ValueError(f"targets {missing} are not test sets of the config: {d.test_datasets}")
    keep = [i for i, name in enumerate(d.test_datasets) if name in targets]
    pick = {
        "test_records": [d.test_records[i] for i in keep],
        "test_datasets": [d.test_datasets[i] for i in keep],
        "test_domains": [d.test_domains[i] for i in keep] if d.test_domains else [],
    }
    return apply_overrides(cfg, [f"data.{k}={json.dumps(v)}" for k, v in pick.items()])


# --------------------------------------------------------------------------- one job
def status(folder: str | Path, job: Job) -> str:
    """done | failed | pending."""
    run_dir = Path(folder) / job.name
    if (run_dir / RECORD).is_file():
        return "done"
    return "failed" if (run_dir / FAILED).is_file() else "pending"


def run_job(spec: Spec, job: Job, folder: str | Path) -> dict[str, Any]:
    """Run one job to its run record; never raises (a failure is written and returned)."""
    from aaclip import experiment

    run_dir = Path(folder) / job.name
    t0 = time.time()
    try:
        cfg = job_config(spec, job, folder)
        result = experiment.run(cfg, run_dir, device=spec.device, progress=False)
        shots = "full" if job.shots is None else str(job.shots)
        means = results.long_means(result.table, job.method, cfg.data.train_dataset, shots)
        wall = round(time.time() - t0, 2)
        record = {
            "job": job.axes(),
            "name": job.name,
            "status": "done",
            "wall_time_s": wall,
            "config": cfg.to_dict(),
            "means": json.loads(means.to_json(orient="records")),
        }
        atomic_write_text(run_dir / RECORD, json.dumps(record, indent=2))
        (run_dir / FAILED).unlink(missing_ok=True)
        return {"name": job.name, "status": "done", "wall_time_s": wall}
    except Exception as err:  # the job's failure is data for the grid, not a crash
        return _failed(folder, job, f"{type(err).__name__}: {err}", traceback.format_exc())


def _failed(folder: str | Path, job: Job, error: str, trace: str) -> dict[str, Any]:
    """Write `failed.json` (one error line and the traceback); the outcome of a failed job."""
    line = " ".join(error.split())
    run_dir = Path(folder) / job.name
    run_dir.mkdir(parents=True, exist_ok=True)
    failure = {"name": job.name, "error": line, "traceback": trace}
    atomic_write_text(run_dir / FAILED, json.dumps(failure, indent=2))
    return {"name": job.name, "status": "failed", "error": line}


# --------------------------------------------------------------------------- engines
def _init_worker(threads: int, gpus: list[str], counter: Any) -> None:
    """Worker i: cores / workers threads and, with several GPUs visible, GPU i mod #GPUs."""
    import logging

    with counter.get_lock():
        index, counter.value = counter.value, counter.value + 1
    if len(gpus) > 1:  # before torch touches CUDA in this fresh (spawned) process
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]

    import torch

    logging.getLogger().setLevel(logging.ERROR)  # open_clip logs "random init" at WARNING
    torch.set_num_threads(threads)


def _visible_gpus(device: str | None) -> list[str]:
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    return listed.split(",") if listed else [str(i) for i in range(torch.cuda.device_count())]


def run_local(
    spec: Spec, jobs: list[Job], folder: Path, workers: int, report: Callable[[dict], None]
) -> list[dict]:
    """Jobs in `workers` parallel processes (each with cores / workers threads, and its own
    GPU where several are visible); 0 runs them in this process, one after the other."""
    if workers == 0:
        return [_reported(run_job(spec, job, folder), report) for job in jobs]
    threads = max(1, (os.cpu_count() or 1) // workers)
    mp = multiprocessing.get_context("spawn")  # fresh processes: no inherited torch state
    init = (threads, _visible_gpus(spec.device), mp.Value("i", 0))
    pool = ProcessPoolExecutor(workers, mp, _init_worker, init)
    with pool:
        futures = {pool.submit(run_job, spec, job, folder): job for job in jobs}
        outcomes = []
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except Exception as err:  # a worker died (out of memory, killed)
                trace = traceback.format_exc()
                outcome = _failed(folder, futures[future], f"worker died: {err}", trace)
            outcomes.append(_reported(outcome, report))
    return outcomes


def run_slurm(spec: Spec, jobs: list[Job], folder: Path, report: Callable[[dict], None]) -> list:
    """Jobs as one Slurm job array through submitit; waits for them. `spec.slurm` holds the
    executor's parameters (e.g. slurm_partition, timeout_min, gpus_per_node); its `cluster`
    entry (default slurm) can name submitit's local or debug executors instead."""
    try:
        import submitit
    except ImportError:
        raise ValueError(
            "--engine slurm needs submitit: pip install submitit (or aaclip[cluster])"
        ) from None
    params = dict(spec.slurm)
    cluster = params.pop("cluster", "slurm")
    executor = submitit.AutoExecutor(folder=folder / "slurm", cluster=cluster)
    executor.update_parameters(**params)
    n = len(jobs)
    handles = executor.map_array(run_job, [spec] * n, jobs, [folder] * n)
    print(f"submitted {n} jobs: {', '.join(str(h.job_id) for h in handles[:3])}{' …' * (n > 3)}")
    outcomes = []
    for job, handle in zip(jobs, handles, strict=True):
        try:
            outcome = handle.result()
        except Exception as err:  # the job never ran to its record (time limit, node failure)
            outcome = _failed(folder, job, f"slurm: {err}", traceback.format_exc())
        outcomes.append(_reported(outcome, report))
    return outcomes


def _reported(outcome: dict, report: Callable[[dict], None]) -> dict:
    report(outcome)
    return outcome


# --------------------------------------------------------------------------- the grid
def run(
    spec: Spec,
    folder: str | Path,
    workers: int = 1,
    engine: str = "local",
    only: Iterable[str] = (),
    report: Callable[[dict], None] = lambda outcome: None,
) -> list[dict]:
    """Run the unfinished jobs of a spec (only those named in `only`, when given); finished
    ones are skipped (outcome `skipped`). Returns one outcome per selected job."""
    folder = Path(folder)
    jobs = expand(spec)
    if only := list(only):
        names = {j.name for j in jobs}
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ValueError(f"no job named {unknown[0]!r} in this grid (`aaclip grid --list`)")
        jobs = [j for j in jobs if j.name in only]
    for job in jobs:
        _check_finished_config(spec, job, folder)
    skipped = [{"name": j.name, "status": "skipped"} for j in jobs if status(folder, j) == "done"]
    todo = [j for j in jobs if status(folder, j) != "done"]
    folder.mkdir(parents=True, exist_ok=True)
    if not todo:
        return skipped
    if engine == "local":
        return skipped + run_local(spec, todo, folder, workers, report)
    if engine == "slurm":
        return skipped + run_slurm(spec, todo, folder, report)
    raise ValueError(f"unknown engine {engine!r}: local | slurm")


def _check_finished_config(spec: Spec, job: Job, folder: Path) -> None:
    """A finished job of another spec in the same folder is an error, never silently reused."""
    record = folder / job.name / RECORD
    if record.is_file():
        done = ExperimentConfig.from_dict(json.loads(record.read_text())["config"])
        if done.to_dict() != job_config(spec, job, folder).to_dict():
            raise ValueError(f"{record}: finished with another config; use another grid folder")


def failures(spec: Spec, folder: str | Path) -> list[dict]:
    """The failed jobs of a grid with their error lines."""
    out = []
    for job in expand(spec):
        path = Path(folder) / job.name / FAILED
        if status(folder, job) == "failed":
            out.append({"name": job.name, "error": json.loads(path.read_text())["error"]})
    return out


def aggregate(spec: Spec, folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The long table of every finished job (`<grid>/long`) and mean ± std over seeds
    (`<grid>/mean_std`, plus the numeric `<grid>/mean_std_values`), each as CSV + markdown."""
    folder = Path(folder)
    rows = []
    for job in expand(spec):
        if status(folder, job) == "done":
            record = json.loads((folder / job.name / RECORD).read_text())
            for row in record["means"]:
                rows.append({"job": job.name, **job.axes(), **row, "shots": row["shots"]})
    if not rows:
        raise ValueError(f"{folder}: no finished job to aggregate")
    long = pd.DataFrame(rows)
    long["target"] = long["target"].astype(str)
    long = long[["job", *AXES, "train_set", "target", "metric", "value"]]
    by = [c for c in long.columns if c not in ("job", "seed", "value")]
    stats = results.mean_std(long, by=by)
    table = results.mean_std_table(stats)
    results.write_table(long, folder / "long")
    results.write_table(stats, folder / "mean_std_values")
    results.write_table(table, folder / "mean_std", note="mean ± std over seeds, percent")
    return long, table


# --------------------------------------------------------------------------- `aaclip grid`
def add_arguments(sp: Any) -> None:
    """The flags of `aaclip grid` (each overrides the same key of --spec)."""
    sp.add_argument("--spec", help="a grid spec JSON (keys: those of aaclip.grid.Spec)")
    sp.add_argument("--out", required=True, help="grid folder: one folder per job, tables")
    sp.add_argument("--methods", help="comma-separated, e.g. clip,aaclip")
    sp.add_argument("--profile", help="preset of every method (default smoke)")
    sp.add_argument("--data-root", help="data root passed to the presets")
    sp.add_argument("--protocols", help="cross,leave_one_out (leave_one_out needs spec sets)")
    sp.add_argument("--targets", help="comma-separated test sets (cross) or held-out sets")
    sp.add_argument("--shots", help="comma-separated, 'full' = full-shot, e.g. full,4")
    sp.add_argument("--seeds", help="comma-separated training seeds, e.g. 1,2,3")
    sp.add_argument("--ablations", help="comma-separated ablation names (base always runs)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, every job")
    sp.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    sp.add_argument("--workers", type=int, default=1, help="local parallel jobs (0: inline)")
    sp.add_argument("--engine", default="local", choices=["local", "slurm"])
    sp.add_argument("--only", action="append", metavar="JOB", help="run only this job")
    sp.add_argument("--list", action="store_true", help="list the jobs and their status")


def spec_from_args(args: Any) -> Spec:
    spec = Spec.load(args.spec) if args.spec else Spec()
    split = lambda text: [t for t in text.split(",") if t]  # noqa: E731
    if args.methods:
        spec.methods = split(args.methods)
    if args.profile:
        spec.profile = args.profile
    if args.data_root:
        spec.data_root = args.data_root
    if args.protocols:
        spec.protocols = split(args.protocols)
    if args.targets:
        spec.targets = split(args.targets)
    if args.shots:
        spec.shots = [None if s == "full" else int(s) for s in split(args.shots)]
    if args.seeds:
        spec.seeds = [int(s) for s in split(args.seeds)]
    if args.ablations:
        spec.ablations = split(args.ablations)
    spec.overrides = [*spec.overrides, *(args.set or [])]
    if args.device:
        spec.device = args.device
    return spec


def main(args: Any) -> int:
    """`aaclip grid`: run the unfinished jobs, list failures, aggregate; exit 1 on failures."""
    spec = spec_from_args(args)
    folder = Path(args.out)
    if args.list:
        for job in expand(spec):
            print(f"{status(folder, job):<8} {job.name}")
        return 0

    def report(outcome: dict) -> None:
        detail = outcome.get("error") or f"{outcome.get('wall_time_s', 0):.1f} s"
        print(f"{outcome['status']:<8} {outcome['name']}  ({detail})", flush=True)

    t0 = time.time()
    outcomes = run(spec, folder, args.workers, args.engine, args.only or (), report)
    done = sum(o["status"] == "done" for o in outcomes)
    skipped = sum(o["status"] == "skipped" for o in outcomes)
    print(f"grid: {done} run, {skipped} already finished, {time.time() - t0:.1f} s")
    failed = failures(spec, folder)
    if any(status(folder, j) == "done" for j in expand(spec)):
        _, table = aggregate(spec, folder)
        print(results.to_markdown(table))
        print(f"tables: {folder}/long.csv, {folder}/mean_std.csv (+ .md)")
    for f in failed:
        print(f"FAILED {f['name']}: {f['error']}  (rerun: --only {f['name']})")
    return 1 if failed else 0
