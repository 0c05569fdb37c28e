"""The training loop: every stage of any method, with atomic checkpoints and exact resume.

A run folder (see `aaclip.runs`) holds `config.json`, one safetensors checkpoint per stage and
epoch, the optimiser state of the last finished epoch (`resume.pt`) and `train_log.jsonl`.
Everything is written atomically (checkpoint, then resume state, then log), so a run killed
at any point resumes from its last finished epoch with `train(..., resume=True)`. The loop
never looks inside a method: stages, parameter groups, loss terms, the groups a batch leaves
out of the step and post-step updates come from the `Method` contract.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from aaclip import checkpoints as ck
from aaclip import data, distributed, runs
from aaclip.config import ExperimentConfig
from aaclip.fileio import atomic_write_text
from aaclip.methods import Method, Stage, create_method, method_class
from aaclip.runtime import autocast, pick_device, seed_everything


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    checkpoints: list[Path]
    log: list[dict]


@dataclass
class Optimiser:
    """The optimiser, (optional) scheduler and (optional) fp16 GradScaler of one stage."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def for_stage(cls, method: Method, stage: Stage) -> Optimiser:
        opt = torch.optim.Adam(method.param_groups(stage), lr=stage.lr, betas=stage.betas)
        sched = None
        if stage.milestones:  # MultiStepLR milestones count iterations
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(stage.milestones), stage.gamma)
        return cls(opt, sched, method.grad_scaler())

    def state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict()}
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


def to_device(batch: dict, device: torch.device, dtype: torch.dtype | None = None) -> dict:
    """Tensors of a loader batch on the device, floating ones in `dtype` when given (the
    method's); lists (class names, paths) as they are."""

    def move(v: torch.Tensor) -> torch.Tensor:
        return v.to(device, dtype) if dtype is not None and v.is_floating_point() else v.to(device)

    return {k: move(v) if torch.is_tensor(v) else v for k, v in batch.items()}


def drop_gradients(optimizer: torch.optim.Optimizer, groups: tuple[int, ...]) -> None:
    """Set the gradients of the given parameter groups to None: the step leaves those
    parameters and their optimiser state as they are (`Method.skipped_groups`)."""
    for i in groups:
        for p in optimizer.param_groups[i]["params"]:
            p.grad = None


def train_step(
    method: Method,
    stage: Stage,
    batch: dict,
    opt: Optimiser,
    precision: str | None = None,
    replica: distributed.Replica | None = None,
) -> dict[str, float]:
    """One step: loss terms -> sum -> finite check -> backward -> the gradients of the groups
    `method.skipped_groups` names dropped -> step -> scheduler -> `method.after_step`. Returns
    the terms and their sum ("loss") as floats; raises FloatingPointError before any update
    when the sum is not finite. The forward runs under
    the method's autocast (`precision` given: that precision's instead); with a GradScaler
    (fp16) the loss is scaled for backward and the step unscaled. Under torchrun
    (`replica`), the terms and the gradient are those of the global batch."""
    amp = method.autocast() if precision is None else autocast(method.device, precision)
    with amp:
        terms = method.loss(stage, batch) if replica is None else replica(stage, batch)
    loss = sum(terms.values())
    shown = {"loss": loss, **terms}
    if replica is not None:
        shown, loss = replica.global_mean(shown), loss * replica.weight
    if not torch.isfinite(shown["loss"]):
        raise FloatingPointError(f"loss is {shown['loss'].item()}")
    opt.optimizer.zero_grad(set_to_none=True)
    if opt.scaler is not None:
        opt.scaler.scale(loss).backward()
        drop_gradients(opt.optimizer, method.skipped_groups(stage, batch))
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
    else:
        loss.backward()
        drop_gradients(opt.optimizer, method.skipped_groups(stage, batch))
        opt.optimizer.step()
    if opt.scheduler is not None:
        opt.scheduler.step()
    method.after_step(stage)
    return {k: v.item() for k, v in shown.items()}


def class_batches(
    dataset: data.RecordDataset, batch: int, generator: torch.Generator
) -> list[list[int]]:
    """Batches that each hold items of one class: every class shuffled on its own and cut
    into batches of `batch` (its last one may be shorter), then the batches shuffled (MVFA's
    leave-one-out training: each batch from one source set, with that set's anchors)."""
    by_class: dict[str, list[int]] = {}
    for i in range(len(dataset)):
        by_class.setdefault(dataset.record(i).class_name, []).append(i)
    batches = []
    for items in by_class.values():
        order = torch.randperm(len(items), generator=generator).tolist()
        shuffled = [items[j] for j in order]
        batches += [shuffled[k : k + batch] for k in range(0, len(shuffled), batch)]
    return [batches[j] for j in torch.randperm(len(batches), generator=generator).tolist()]


def _loader(
    dataset: Dataset | range, batch: int, workers: int, seed: int, one_class: bool = False
) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    if one_class:
        batches = class_batches(dataset, batch, gen)
        return DataLoader(dataset, batch_sampler=batches, num_workers=workers)
    return DataLoader(dataset, batch_size=batch, shuffle=True, generator=gen, num_workers=workers)


def _epoch_seed(seed: int, stage: int, epoch: int) -> int:
    return seed * 1000 + stage * 100 + epoch


def _resume_state(run_dir: Path) -> dict | None:
    path = run_dir / "resume.pt"
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


class RunFolderError(ValueError):
    """A run folder holds another run; the message names the differing keys and the ways out."""


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(old: ExperimentConfig, new: ExperimentConfig) -> dict[str, tuple]:
    """{dotted key: (old value, new value)} for every setting that differs."""
    a, b = _flat(old.to_dict()), _flat(new.to_dict())
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _grows_epochs(old: ExperimentConfig, new: ExperimentConfig, done_stage: int) -> bool:
    """True when `new` only adds epochs to the stage being trained or to later ones."""
    diff = config_diff(old, new)
    if not all(k.endswith("epochs") for k in diff):
        return False
    from aaclip.methods import method_class

    was = capped(method_class(old.method).schedule(old.model), old.train.max_epochs)
    now = capped(method_class(new.method).schedule(new.model), new.train.max_epochs)
    return all(
        n.epochs == w.epochs if i < done_stage else n.epochs >= w.epochs
        for i, (w, n) in enumerate(zip(was, now, strict=True), start=1)
    )


def _prepare_run_folder(run_dir: Path, cfg: ExperimentConfig, fresh: bool) -> None:
    """Make `run_dir` ready: move an old run aside (fresh), or check it is this run.

    A folder whose config was written but that has no checkpoint yet (a run that failed
    before its first epoch) is not a lock: it is reused. A finished run whose config only
    grows the epochs continues.
    """
    state = (run_dir / "resume.pt").is_file() or any((run_dir / "checkpoints").glob("*"))
    if fresh and run_dir.is_dir() and any(run_dir.iterdir()):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
        run_dir.rename(aside)  # one atomic rename: nothing of the old run is mixed in
        print(f"moved the previous run aside: {aside}")
        state = False
    config_file = run_dir / "config.json"
    if state and config_file.is_file():
        old = ExperimentConfig.load(config_file)
        saved = _resume_state(run_dir)
        done = saved["stage"] if saved else 0
        if old.to_dict() != cfg.to_dict() and not _grows_epochs(old, cfg, done):
            diff = config_diff(old, cfg)
            shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:4])
            more = f" (+{len(diff) - 4} more)" if len(diff) > 4 else ""
            raise RunFolderError(
                f"{config_file}: the run folder holds a run with another config ({shown}{more}); "
                "use another --run folder, or --fresh to move this run aside"
            )
    run_dir.mkdir(parents=True, exist_ok=True)


def capped(stages: list[Stage], max_epochs: int | None) -> list[Stage]:
    """The stages with `train.max_epochs` applied."""
    if max_epochs is None:
        return stages
    return [replace(s, epochs=min(s.epochs, max_epochs)) for s in stages]


def train(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    device: str | None = None,
    resume: bool = True,
    progress: bool = True,
    fresh: bool = False,
) -> TrainResult:
    """Train every stage of the config's method; resume from the last finished epoch.

    `fresh=True` (or `resume=False`) moves an existing run in `run_dir` aside first. Under
    torchrun: data-parallel over the processes (see `aaclip.distributed`).
    """
    run_dir = Path(run_dir)
    ctx = distributed.setup(pick_device(device))
    dev = ctx.device
    t = cfg.train
    # methods that train on classification-only sets accept anomalies without masks
    needs_masks = method_class(cfg.method).needs_masks
    records = data.load_records(cfg.data.train_records, require_masks=needs_masks)
    root = Path(cfg.data.train_records).parent
    if t.shots:
        records = data.sample_few_shot(records, t.shots, t.seed)
    method = create_method(cfg, dev)
    distributed.check_method(method, ctx.world)
    stages = capped(method.stages(), t.max_epochs)
    if not any(s.epochs for s in stages):
        raise ValueError(f"method {cfg.method!r} has no training stage: nothing to train")
    for stage in stages:
        distributed.per_rank_batch(stage, ctx.world)
    if ctx.is_main:  # under torchrun, rank 0 prepares the folder while the others wait
        _prepare_run_folder(run_dir, cfg, fresh or not resume)
        atomic_write_text(run_dir / "config.json", cfg.to_json())
    ctx.barrier()

    state = _resume_state(run_dir)
    done_stage, done_epoch = (state["stage"], state["epoch"]) if state else (0, 0)
    last_ckpt = runs.checkpoint_path(run_dir, done_stage, done_epoch) if state else None
    if last_ckpt is not None:
        tensors, _ = ck.load_adapters(last_ckpt, method.backbone.identity, method.name)
        method.load_adapter_state(tensors, str(last_ckpt))
    log = runs.read_log(run_dir)
    written: list[Path] = []
    classes = data.class_names(records)
    spec = method.input_spec()

    for index, stage in enumerate(stages, start=1):
        start = done_epoch if index == done_stage else (stage.epochs if index < done_stage else 0)
        if start >= stage.epochs:
            continue
        opt = Optimiser.for_stage(method, stage)
        if state and index == done_stage:
            opt.load_state_dict(state)
        method.start_stage(stage, classes, cfg.data.train_dataset)
        method.train()
        replica = distributed.Replica(method, stage, ctx) if ctx.world > 1 else None
        dataset = data.RecordDataset(
            records, root, spec.image_size, stage.augment, spec.mean, spec.std, method.dtype
        )
        steps = len(_loader(dataset, stage.batch_size, 0, 0, stage.one_class_per_batch))
        bar = tqdm(
            total=(stage.epochs - start) * steps,
            desc=stage.name,
            disable=not progress or not ctx.is_main,
        )
        for epoch in range(start + 1, stage.epochs + 1):
            seed_everything(ctx.seed(_epoch_seed(t.seed, index, epoch)))
            method.start_epoch(stage, epoch)
            loader = _loader(
                dataset, stage.batch_size, t.num_workers, t.seed + epoch, stage.one_class_per_batch
            )
            if replica is not None:  # this rank's parts of the batches `loader` would draw
                indices = _loader(range(len(dataset)), stage.batch_size, 0, t.seed + epoch)
                loader = replica.loader(dataset, indices, t.num_workers)
            epoch_terms: list[dict[str, float]] = []
            for step, batch in enumerate(loader):
                try:
                    terms = train_step(
                        method, stage, to_device(batch, dev, method.dtype), opt, replica=replica
                    )
                except FloatingPointError as err:
                    kept = (
                        f"last good checkpoint: {last_ckpt}"
                        if last_ckpt
                        else "no checkpoint was written yet"
                    )
                    raise TrainingDivergedError(
                        f"stage {index} ({stage.name}) epoch {epoch} step {step}: {err}; "
                        f"stopped ({kept})"
                    ) from None
                epoch_terms.append(terms)
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{terms['loss']:.4f}")
            method.after_epoch(stage, dataset)
            last_ckpt = runs.checkpoint_path(run_dir, index, epoch)
            if ctx.is_main:  # under torchrun rank 0 writes, then every rank goes on
                _finish_epoch(run_dir, cfg, method, index, stage, epoch, epoch_terms, opt, log)
            ctx.barrier()
            written.append(last_ckpt)
        bar.close()
    method.eval()
    return TrainResult(run_dir, written, log)


def _finish_epoch(
    run_dir: Path,
    cfg: ExperimentConfig,
    method: Method,
    index: int,
    stage: Stage,
    epoch: int,
    epoch_terms: list[dict[str, float]],
    opt: Optimiser,
    log: list[dict],
) -> Path:
    """Checkpoint first, then the resume state, then the log line: each write is atomic."""
    keys = dict.fromkeys(k for t in epoch_terms for k in t)  # a term may skip some batches
    means = {k: float(np.mean([t[k] for t in epoch_terms if k in t])) for k in keys}
    mean_loss = means.pop("loss", float("nan"))
    path = runs.checkpoint_path(run_dir, index, epoch)
    meta = {
        "method": method.name,
        "stage": index,
        "stage_name": stage.name,
        "epoch": epoch,
        "loss": mean_loss,
        "loss_terms": means,
        "backbone": method.backbone.identity,
        "config": cfg.to_dict(),
    }
    ck.save_adapters(path, method.adapter_state(), meta)
    ck.atomic_torch_save(
        {"stage": index, "epoch": epoch, **opt.state_dict()}, run_dir / "resume.pt"
    )
    log.append(
        {"stage": index, "stage_name": stage.name, "epoch": epoch, "loss": mean_loss,
         "terms": means, "time": time.time()}
    )  # fmt: skip
    atomic_write_text(run_dir / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in log))
    return path
