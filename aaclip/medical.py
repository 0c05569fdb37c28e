"""The MVFA medical protocol as one grid, for any registered method (MVFA-AD, ClipMPCAD,
IQE-CLIP): six sets, leave-one-out zero-shot and k-shot per target, one table.

Sets (seed-methods.md section 2) live in MVFA's layout under one folder, each converted by
``python -m data_prep.mvfa --root <Obj>_AD --shots fewshot_seed`` into
``<Obj>_AD/test.jsonl`` and ``<Obj>_AD/<k>-shot.jsonl``. For each shot count k and target:

- k = 0, **leave-one-out**: train on the test splits of the five other sets (their records
  merged into ``<runs>/records/leave_out_<Obj>.jsonl``; each batch from one source, with its
  anchors: the method's stage says ``one_class_per_batch``), test on the target's test split;
- k > 0: train on the target's k-shot supports, fit the memory bank on their normals
  (``data.memory_records``), test on the target's test split.

A run is the method's preset for the profile with the method's ``PROTOCOLS[mode]``
overrides ("zero_shot" / "few_shot"), the data above and the user's overrides; it goes
through ``aaclip.experiment.run`` (train -> the fixed last epoch -> evaluate) into
``<runs>/<Obj>_<k>shot`` (default ``runs/protocol/<method>-<profile>``; ``aaclip test --run``
re-scores one). Finished runs are reused when the grid is run again.
Outputs (``<out>``: default ``results/_scratch/protocol/<method>-<profile>``, untracked; the
tracked ``results/protocol/`` only with ``--out``): ``<out>/grid.csv`` (every metric, long),
``<out>/table.{csv,md}`` (image AUROC on six sets, pixel AUROC on the segmentation sets,
the other metrics, beside the published columns of ``results/published_results.csv``) with
the checkpoint-selection note.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from aaclip import data
from aaclip.config import ExperimentConfig, apply_overrides, preset
from aaclip.fileio import atomic_write_text
from aaclip.methods import METHODS, method_class
from aaclip.protocols import merge_records
from aaclip.results import SCRATCH, load_published, write_csv, write_table


@dataclass(frozen=True)
class MedicalSet:
    """One set of the protocol: folder name (`<Obj>_AD`), published name, masks or not, and
    the folder `data_prep.mvfa` writes its records to by default when that is a paper-profile
    target of AA-CLIP (`data/Brain`, ...; the others stay in `<Obj>_AD`)."""

    obj: str
    shown_as: str
    segmentation: bool
    converted: str | None = None


SETS = (
    MedicalSet("Brain", "BrainMRI", True, "Brain"),
    MedicalSet("Liver", "LiverCT", True, "Liver"),
    MedicalSet("Retina_RESC", "RESC", True, "Retina"),
    MedicalSet("Retina_OCT2017", "OCT17", False),
    MedicalSet("Chest", "ChestXray", False),
    MedicalSet("Histopathology", "HIS", False),
)
BY_OBJ = {s.obj: s for s in SETS}
SHOTS = (0, 2, 4, 8, 16)
AVERAGE = "medical average"
DEFAULT_ROOT = {"smoke": "data/synthetic/mvfa", "paper": "data"}
HEADLINE = ("image_auroc", "pixel_auroc")
OTHER_METRICS = ("image_ap", "image_f1_max", "pixel_ap", "pixel_f1_max", "pixel_aupro")


class ProtocolError(ValueError):
    """A grid that cannot run as asked; the message is one line."""


def sets_root(profile: str, data_root: str | Path | None = None) -> Path:
    """The folder holding the `<Obj>_AD` sets: given, else the profile's default."""
    if data_root is not None:
        return Path(data_root)
    if profile not in DEFAULT_ROOT:
        raise ProtocolError(f"profile {profile!r}: pass --data, the folder holding <Obj>_AD")
    return Path(DEFAULT_ROOT[profile])


def ensure_smoke_sets(root: Path) -> None:
    """Build the embedded dataset (MVFA sets included) when `root` is its `mvfa` folder and
    the sets are not there yet."""
    if (root / "Brain_AD" / "test.jsonl").is_file() or root.name != "mvfa":
        return
    from data_prep.synthetic import build

    build(root.parent, seed=0)


def parse_shots(text: str | Sequence[int]) -> list[int]:
    """`"0,2,4"` -> [0, 2, 4]; each k must be 0 (zero-shot) or a released seed-file k."""
    try:
        shots = [int(k) for k in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise ProtocolError(f"--shots: expected comma-separated integers, got {text!r}") from None
    bad = [k for k in shots if k not in SHOTS]
    if bad or not shots:
        raise ProtocolError(
            f"--shots: {bad or 'none'} not in the protocol's k ({', '.join(map(str, SHOTS))})"
        )
    return list(dict.fromkeys(shots))


def parse_sets(names: str | Sequence[str] | None) -> list[str]:
    """Folder names of the chosen sets (default all six, in the protocol's order)."""
    if names is None:
        return [s.obj for s in SETS]
    chosen = names.split(",") if isinstance(names, str) else list(names)
    unknown = [n for n in chosen if n not in BY_OBJ]
    if unknown:
        raise ProtocolError(
            f"unknown set(s) {', '.join(unknown)}; the protocol's sets: "
            + ", ".join(s.obj for s in SETS)
        )
    return chosen


def _records_file(root: Path, obj: str, name: str) -> Path:
    """`<root>/<Obj>_AD/<name>`, else where `data_prep.mvfa` writes it by default."""
    path = root / f"{obj}_AD" / name
    converted = BY_OBJ[obj].converted
    for candidate in (path, root / converted / name if converted else None):
        if candidate is not None and candidate.is_file():
            return candidate
    raise ProtocolError(
        f"{path}: missing; convert the set with `python -m data_prep.mvfa --root "
        f"{root / (obj + '_AD')} --shots <fewshot_seed folder>`"
    )


def check_pixel_sets(root: Path, sets: list[str], pixel_sets: list[str]) -> None:
    """Every set asked for pixel metrics must have masks for all its anomalous test images;
    a classification-only set asked for them is one error line."""
    for obj in pixel_sets:
        if obj not in sets:
            continue
        records = data.load_records(_records_file(root, obj, "test.jsonl"), require_masks=False)
        no_mask = [r for r in records if r.label == 1 and not r.mask_path]
        if no_mask:
            kind = "a classification-only set" if not BY_OBJ[obj].segmentation else "a set"
            raise ProtocolError(
                f"{obj}: {kind} without anomaly masks ({len(no_mask)} of "
                f"{sum(r.label for r in records)} anomalous test images) was asked for pixel "
                "metrics; pixel AUROC needs masks (drop it from --pixel-sets)"
            )


def run_config(
    method: str,
    profile: str,
    root: Path,
    target: str,
    shots: int,
    work: Path,
    overrides: Sequence[str] = (),
) -> ExperimentConfig:
    """The config of one grid cell: the method's preset, its protocol overrides, the data."""
    cfg = preset(profile, method)
    mode = "zero_shot" if shots == 0 else "few_shot"
    cfg = apply_overrides(cfg, list(method_class(method).PROTOCOLS.get(mode, [])))
    test = _records_file(root, target, "test.jsonl")
    if shots == 0:
        others = [_records_file(root, s.obj, "test.jsonl") for s in SETS if s.obj != target]
        train = merge_records(others, work / "records" / f"leave_out_{target}.jsonl")
        memory: list[str] = []
        train_name = f"all-but-{target}"
    else:
        train = _records_file(root, target, f"{shots}-shot.jsonl")
        memory = [str(train)]
        train_name = target
    data_overrides = {
        "data.train_records": str(train),
        "data.train_dataset": train_name,
        "data.test_records": [str(test)],
        "data.test_datasets": [target],
        "data.test_domains": ["medical"],
        "data.memory_records": memory,
    }
    items = [
        f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in data_overrides.items()
    ]
    return apply_overrides(cfg, items + list(overrides))


def _run_cell(args: tuple) -> pd.DataFrame:
    """One grid cell (train, evaluate), reusing a finished run with the same config."""
    cfg, run_dir, device, threads = args
    if threads:
        import torch

        torch.set_num_threads(threads)
    from aaclip.experiment import run

    run_dir = Path(run_dir)
    done = run_dir / "grid_cell.csv"
    config_file = run_dir / "config.json"
    if (
        done.is_file()
        and config_file.is_file()
        and ExperimentConfig.load(config_file).to_dict() == cfg.to_dict()
    ):
        return pd.read_csv(done)
    t0 = time.time()
    result = run(cfg, run_dir, device=device, progress=False)
    table = result.table.copy()
    table["wall_time_s"] = round(time.time() - t0, 2)
    atomic_write_text(done, table.to_csv(index=False))
    return table


def default_folders(
    method: str, profile: str, out_dir: str | Path | None, runs_dir: str | Path | None
) -> tuple[Path, Path]:
    """The tables' folder (default under the untracked `results/_scratch/protocol/`; the
    tracked `results/protocol/` only when asked) and the runs' (`runs/protocol/`)."""
    out = Path(out_dir) if out_dir else SCRATCH / "protocol" / f"{method}-{profile}"
    runs = Path(runs_dir) if runs_dir else Path("runs") / "protocol" / f"{method}-{profile}"
    return out, runs


def refuse_untrainable(
    method: str,
    profile: str,
    root: Path,
    sets: Sequence[str],
    shots: Sequence[int],
    work: Path,
    overrides: Sequence[str] = (),
) -> None:
    """One line, before anything runs, when the method cannot train a cell as the protocol
    says: a method that needs anomaly masks (`needs_masks`) on training records without them
    (leave-one-out trains on the classification-only sets)."""
    from aaclip import runs

    cls = method_class(method)
    if not cls.needs_masks:
        return
    for k in shots:
        for target in sets:
            cfg = run_config(method, profile, root, target, k, work, overrides)
            if not runs.last_stage(cfg)[0]:
                return  # nothing to train (the CLIP baseline)
            records = data.load_records(cfg.data.train_records, require_masks=False)
            if any(r.label == 1 and not r.mask_path for r in records):
                able = [m for m, c in METHODS.items() if not c.needs_masks]
                mode = "zero-shot (leave-one-out)" if k == 0 else f"{k}-shot"
                raise ProtocolError(
                    f"protocol mvfa --method {method}: {cls.published_name or method} trains on "
                    f"anomaly masks, and the {mode} cell {target} trains on sets without "
                    f"them ({cfg.data.train_dataset}); methods that train without masks: "
                    f"{', '.join(able)}"
                )


@dataclass
class GridResult:
    long: pd.DataFrame  # method, shots, target, metric, value (fractions)
    table: pd.DataFrame  # wide, beside the published columns (fractions)
    out_dir: Path
    wall_time_s: float


def run_grid(
    method: str,
    shots: Sequence[int] = SHOTS,
    profile: str = "smoke",
    out_dir: str | Path | None = None,
    runs_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    sets: Sequence[str] | None = None,
    pixel_sets: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
    workers: int = 1,
    progress: bool = True,
) -> GridResult:
    """Every (k, target) cell of the protocol for one method; one table beside published."""
    t0, cpu0 = time.time(), _cpu_seconds()
    cls = method_class(method)
    shots = parse_shots(shots)
    sets = parse_sets(sets)
    pixel = (
        parse_sets(pixel_sets)
        if pixel_sets is not None
        else [s.obj for s in SETS if s.segmentation]
    )
    root = sets_root(profile, data_root)
    if profile == "smoke":
        ensure_smoke_sets(root)
    check_pixel_sets(root, sets, pixel)
    out, work = default_folders(method, profile, out_dir, runs_dir)
    refuse_untrainable(method, profile, root, sets, shots, work, overrides)
    cells = []
    for k in shots:
        for target in sets:
            cfg = run_config(method, profile, root, target, k, work, overrides)
            cells.append((k, target, cfg, work / f"{target}_{k}shot"))
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    jobs = [(cfg, run_dir, device, threads) for _, _, cfg, run_dir in cells]
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            tables = list(pool.map(_run_cell, jobs))
    else:
        tables = []
        for (k, target, _, _), job in zip(cells, jobs, strict=True):
            if progress:
                print(f">> {method} {target} k={k}", flush=True)
            tables.append(_run_cell(job))
    rows = []
    for (k, target, _, _), table in zip(cells, tables, strict=True):
        mean = table[table["class_name"] == "mean"].iloc[0]
        for metric in (*HEADLINE, *OTHER_METRICS):
            value = float(mean[metric]) if metric in mean else float("nan")
            if metric.startswith("pixel") and target not in pixel:
                value = float("nan")
            rows.append((method, k, target, metric, value, float(mean.get("wall_time_s", np.nan))))
    long = pd.DataFrame(rows, columns=["method", "shots", "target", "metric", "value", "wall_s"])
    wide = grid_table(long, cls.published_name or method)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(long, out / "grid.csv")
    cfg0 = cells[0][2]
    note = selection_note(cls, cfg0, profile)
    write_table(wide, out / "table", note=note)
    wall = time.time() - t0
    atomic_write_text(
        out / "grid.json",
        json.dumps(
            {
                "method": method,
                "profile": profile,
                "shots": shots,
                "sets": sets,
                "pixel_sets": pixel,
                "data_root": str(root),
                "runs": str(work),
                "overrides": list(overrides),
                "workers": workers,
                "device": _device_text(device),
                "wall_time_s": round(wall, 1),
                "cpu_time_s": round(_cpu_seconds() - cpu0, 1),
                "note": note,
            },
            indent=2,
        ),
    )
    return GridResult(long, wide, out, wall)


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (parallel runs)."""
    import resource

    return sum(
        r.ru_utime + r.ru_stime
        for r in (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
    )


def _device_text(device: str | None) -> str:
    from aaclip.runtime import device_name, pick_device

    return device_name(pick_device(device))


def selection_note(cls, cfg: ExperimentConfig, profile: str) -> str:
    """What a reader must know to compare the table with the published columns."""
    from aaclip.runs import last_stage

    stage, epochs = last_stage(cfg)
    stages = cls.schedule(cfg.model)
    batch = stages[stage - 1].batch_size if stage else None
    note = (
        "Published columns: the released code keeps the epoch that scores best on the test "
        "set (MVFA-AD's train_few.py / train_zero.py; its GitHub issue #17); 'paper' and "
        "'implementation' are the authors' README columns (rows of "
        "results/published_results.csv). Ours: a fixed "
        f"epoch, the last of the schedule ({epochs}), batch size {batch}, never selected on "
        "the test set. Image AUROC on every set, pixel AUROC on the segmentation sets; "
        "'medical average' = unweighted mean over the sets where a metric is defined."
    )
    if profile == "smoke":
        note = (
            "SMOKE PROFILE: tiny randomly initialised CLIP on the embedded MVFA-layout sets; "
            "proves the pipeline, not the paper. " + note
        )
    return note


def _published_label(source: str) -> str:
    if "(" in source and source.endswith(")"):
        inner = source[source.rindex("(") + 1 : -1]
        return inner.removesuffix(" column")
    return source


def grid_table(
    long: pd.DataFrame, published_name: str, published: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per (k, target) plus a 'medical average' per k: the headline metrics beside
    every published column for that method, then the other metrics. Fractions in [0, 1]
    (published percentages divided by 100), as every table here; markdown shows percent."""
    pub = load_published() if published is None else published
    pub = pub[pub["method"] == published_name].copy()
    pub["label"] = pub["source"].map(_published_label)
    labels = list(dict.fromkeys(pub["label"]))
    rows = []
    for k in sorted(long["shots"].unique()):
        part = long[long["shots"] == k]
        targets = list(dict.fromkeys(part["target"]))
        for target in [*targets, AVERAGE]:
            if target == AVERAGE:
                values = part.groupby("metric")["value"].mean()
                shown = AVERAGE
            else:
                values = part[part["target"] == target].set_index("metric")["value"]
                shown = BY_OBJ[target].shown_as if target in BY_OBJ else target
            row: dict = {"shots": int(k), "target": shown}
            train_set = "leave-one-out" if k == 0 else "target"
            for metric in HEADLINE:
                row[metric] = values.get(metric, np.nan)
                for label in labels:
                    hit = pub[
                        (pub["label"] == label)
                        & (pub["shots"].astype(str) == str(k))
                        & (pub["train_set"] == train_set)
                        & (pub["target"] == shown)
                        & (pub["metric"] == metric)
                    ]
                    row[f"{metric} {label}"] = (
                        float(hit["value"].iloc[0]) / 100 if len(hit) else np.nan
                    )
            for metric in OTHER_METRICS:
                row[metric] = values.get(metric, np.nan)
            rows.append(row)
    return pd.DataFrame(rows)
