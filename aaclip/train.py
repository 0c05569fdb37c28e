"""AA-CLIP training: stage 1 (text adapters) then stage 2 (image adapters).

A run folder holds `config.json`, one safetensors checkpoint per epoch and stage
(`checkpoints/stage{1,2}_epoch{NNN}.safetensors`), the optimiser state of the last finished
epoch (`resume.pt`) and `train_log.jsonl`. Everything is written atomically, so a run killed
at any point resumes from its last finished epoch with `train(..., resume=True)`.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from aaclip import backbone as bb
from aaclip import checkpoints as ck
from aaclip import data, losses, scoring
from aaclip.config import ExperimentConfig
from aaclip.fileio import atomic_write_text
from aaclip.methods.aaclip import AAClip


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class _Stage:
    """What differs between the two stages: epochs, batch, augmentation, optimiser, loss."""

    number: int
    name: str
    epochs: int
    batch_size: int
    augment: str
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    loss: Callable[[dict], torch.Tensor]


@dataclass
class TrainResult:
    run_dir: Path
    checkpoints: list[Path]
    log: list[dict]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device, precision: str):
    """bf16 autocast on GPU when asked for; fp32 everywhere else."""
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def build_backbone(cfg: ExperimentConfig, device: torch.device) -> torch.nn.Module:
    """The frozen CLIP of a config (fp32 weights; bf16 comes from autocast)."""
    b = cfg.backbone
    return bb.create_clip(
        b.name, b.weights, b.image_size, b.quick_gelu, "fp32", device,
        require_weights=b.require_weights,
    )  # fmt: skip


def build_model(cfg: ExperimentConfig, device: torch.device) -> AAClip:
    """The frozen backbone wrapped with fresh AA-CLIP adapters."""
    return AAClip(build_backbone(cfg, device), cfg.model).to(device)


def init_model(cfg: ExperimentConfig, device: torch.device) -> AAClip:
    """The model exactly as training starts it: adapters drawn from `train.seed`."""
    seed_everything(cfg.train.seed)
    return build_model(cfg, device)


def checkpoint_path(run_dir: Path, stage: int, epoch: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"stage{stage}_epoch{epoch:03d}.safetensors"


def _meta(cfg: ExperimentConfig, model: AAClip, stage: int, epoch: int, loss: float) -> dict:
    return {
        "method": "aaclip",
        "stage": stage,
        "epoch": epoch,
        "loss": loss,
        "backbone": model.clip.aaclip_identity,
        "config": cfg.to_dict(),
    }


def _loader(records, root, cfg: ExperimentConfig, batch: int, augment: str, seed: int):
    dataset = data.RecordDataset(records, root, cfg.backbone.image_size, augment=augment)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        generator=gen,
        num_workers=cfg.train.num_workers,
        drop_last=False,
    )


def _stack_anchors(anchors: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.stack([anchors[n] for n in names], dim=0)


def _check_finite(loss: torch.Tensor, stage: int, epoch: int, step: int, last: Path | None):
    if not torch.isfinite(loss):
        kept = f"last good checkpoint: {last}" if last else "no checkpoint was written yet"
        raise TrainingDivergedError(
            f"stage {stage} epoch {epoch} step {step}: loss is {loss.item()}; stopped ({kept})"
        )


def stage1_loss(model: AAClip, batch: dict, device, dataset: str | None) -> torch.Tensor:
    """Segmentation loss of the stage-1 features against adapted anchors, + disentangle."""
    cfg = model.cfg
    images, masks = batch["image"].to(device), batch["mask"].to(device)
    features, image_embedding = model.stage1_features(images)
    anchors = _stack_anchors(model.anchors_for(batch["class_name"], dataset), batch["class_name"])
    size = images.shape[-1]
    levels = features[-1:] if cfg.stage1_levels == "last" else features
    loss = sum(
        losses.segmentation_loss(scoring.training_probs(f, anchors, size), masks) for f in levels
    )
    loss = loss + cfg.text_norm_weight * losses.disentangle_loss(anchors)
    if cfg.stage1_cls_loss:
        logits = torch.einsum("be,bec->bc", image_embedding, anchors)
        loss = loss + F.cross_entropy(logits, batch["label"].to(device))
    return loss


def stage2_loss(model: AAClip, batch: dict, anchors: dict, device) -> torch.Tensor:
    """Classification of the detection feature + segmentation loss summed over levels."""
    images, masks = batch["image"].to(device), batch["mask"].to(device)
    seg, det = model.encode_image(images)
    a = _stack_anchors(anchors, batch["class_name"]).to(det.dtype)
    logits = torch.einsum("be,bec->bc", det, a)
    loss = F.cross_entropy(logits.float(), batch["label"].to(device))
    size = images.shape[-1]
    for f in seg:
        loss = loss + losses.segmentation_loss(scoring.training_probs(f, a, size).float(), masks)
    return loss


def _resume_state(run_dir: Path) -> dict | None:
    path = run_dir / "resume.pt"
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def _epoch_seed(seed: int, stage: int, epoch: int) -> int:
    return seed * 1000 + stage * 100 + epoch


def train(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    device: str | None = None,
    resume: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Train both stages; resume from the last finished epoch found in `run_dir`."""
    run_dir = Path(run_dir)
    dev = pick_device(device)
    t = cfg.train
    records = data.load_records(cfg.data.train_records)
    root = Path(cfg.data.train_records).parent
    if t.shots:
        records = data.sample_few_shot(records, t.shots, t.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "config.json"
    if config_file.is_file() and resume:
        saved = json.loads(config_file.read_text())
        if saved != json.loads(cfg.to_json()):
            raise ValueError(f"{config_file}: the run folder holds a run with another config")
    atomic_write_text(config_file, cfg.to_json())

    model = init_model(cfg, dev)
    state = _resume_state(run_dir) if resume else None
    done_stage, done_epoch = (state["stage"], state["epoch"]) if state else (0, 0)
    last_ckpt = checkpoint_path(run_dir, done_stage, done_epoch) if state else None
    if last_ckpt is not None:
        tensors, _ = ck.load_adapters(last_ckpt, model.clip.aaclip_identity)
        model.load_adapter_state(tensors, str(last_ckpt))
    log = _read_log(run_dir)
    written: list[Path] = []
    dataset_name = cfg.data.train_dataset

    def run(stage: _Stage, start: int) -> None:
        nonlocal last_ckpt
        if start >= stage.epochs:
            return
        model.train()
        steps = math.ceil(len(records) / stage.batch_size)
        bar = tqdm(total=(stage.epochs - start) * steps, desc=stage.name, disable=not progress)
        for epoch in range(start + 1, stage.epochs + 1):
            seed_everything(_epoch_seed(t.seed, stage.number, epoch))
            loader = _loader(records, root, cfg, stage.batch_size, stage.augment, t.seed + epoch)
            epoch_losses = []
            for step, batch in enumerate(loader):
                with autocast(dev, cfg.backbone.precision):
                    loss = stage.loss(batch)
                _check_finite(loss, stage.number, epoch, step, last_ckpt)
                stage.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                stage.optimizer.step()
                if stage.scheduler is not None:
                    stage.scheduler.step()  # MultiStepLR milestones count iterations
                epoch_losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}")
            last_ckpt = _finish_epoch(run_dir, cfg, model, stage, epoch, epoch_losses, log)
            written.append(last_ckpt)
        bar.close()

    # ---------------- stage 1: text adapters against frozen surgery features
    opt1 = torch.optim.Adam(model.text_adapter.parameters(), lr=t.stage1_lr, betas=t.betas)
    stage1 = _Stage(
        1,
        "stage 1 (text)",
        t.stage1_epochs,
        t.stage1_batch_size,
        "geometric",
        opt1,
        None,
        lambda batch: stage1_loss(model, batch, dev, dataset_name),
    )
    if state and done_stage == 1:
        opt1.load_state_dict(state["optimizer"])
    run(stage1, done_epoch if done_stage == 1 else (t.stage1_epochs if done_stage == 2 else 0))

    # ---------------- stage 2: image adapters against fixed adapted anchors
    model.eval()
    with torch.no_grad(), autocast(dev, cfg.backbone.precision):
        names = data.class_names(records)
        anchors = model.anchors_for(names, dataset_name, adapted=t.stage1_epochs > 0)
        anchors = {k: v.float() for k, v in anchors.items()}
    opt2 = torch.optim.Adam(model.image_adapter.parameters(), lr=t.stage2_lr, betas=t.betas)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt2, list(t.milestones), gamma=t.gamma)
    stage2 = _Stage(
        2,
        "stage 2 (image)",
        t.stage2_epochs,
        t.stage2_batch_size,
        "geometric+color",
        opt2,
        sched,
        lambda batch: stage2_loss(model, batch, anchors, dev),
    )
    if state and done_stage == 2:
        opt2.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    run(stage2, done_epoch if done_stage == 2 else 0)
    model.eval()
    return TrainResult(run_dir, written, log)


def _finish_epoch(run_dir, cfg, model, stage: _Stage, epoch, epoch_losses, log) -> Path:
    """Checkpoint first, then the resume state, then the log line: each write is atomic."""
    mean_loss = float(np.mean(epoch_losses)) if epoch_losses else float("nan")
    path = checkpoint_path(run_dir, stage.number, epoch)
    meta = _meta(cfg, model, stage.number, epoch, mean_loss)
    ck.save_adapters(path, model.adapter_state(), meta)
    resume = {"stage": stage.number, "epoch": epoch, "optimizer": stage.optimizer.state_dict()}
    if stage.scheduler is not None:
        resume["scheduler"] = stage.scheduler.state_dict()
    ck.atomic_torch_save(resume, run_dir / "resume.pt")
    log.append({"stage": stage.number, "epoch": epoch, "loss": mean_loss, "time": time.time()})
    atomic_write_text(run_dir / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in log))
    return path


def _read_log(run_dir: Path) -> list[dict]:
    path = run_dir / "train_log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def final_checkpoint(run_dir: str | Path, cfg: ExperimentConfig) -> Path:
    """The checkpoint `test` evaluates: the configured fixed epoch, else the last stage-2 epoch."""
    epoch = cfg.train.eval_epoch or cfg.train.stage2_epochs
    stage = 2 if cfg.train.stage2_epochs > 0 else 1
    if stage == 1:
        epoch = cfg.train.eval_epoch or cfg.train.stage1_epochs
    path = checkpoint_path(Path(run_dir), stage, epoch)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint for epoch {epoch}; has training finished?")
    return path
