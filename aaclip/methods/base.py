"""The contract every method fulfils, so one training loop and one evaluation pass serve all.

A method owns what differs between detectors: its trainable state (under `self.adapters`),
its training stages and loss terms, its per-class context (text, optionally a memory bank of
reference normals) and its per-class score rule. The package owns the rest: backbone,
records and loaders, the loop (`aaclip.train`), the pass (`aaclip.evaluate`), metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from aaclip import runtime, scoring
from aaclip.backbone import Backbone
from aaclip.runtime import full_precision
from aaclip.transforms import CLIP_MEAN, CLIP_STD


@dataclass(frozen=True)
class InputSpec:
    """What the loaders feed a method (timm's pretrained_cfg): size and normalisation."""

    image_size: int
    mean: tuple[float, float, float] | None = CLIP_MEAN  # None: no normalisation
    std: tuple[float, float, float] | None = CLIP_STD


@dataclass(frozen=True)
class Stage:
    """One training stage as data: its name, schedule and augmentation recipe.

    The parameters it optimises come from `Method.param_groups(stage)`.
    """

    name: str
    epochs: int
    batch_size: int
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    milestones: tuple[int, ...] = ()  # MultiStepLR, in iterations; () = constant lr
    gamma: float = 0.5
    augment: str = "geometric"  # a recipe of aaclip.transforms.AUGMENTATIONS
    one_class_per_batch: bool = False  # True: every batch holds images of one class only


@dataclass
class ClassContext:
    """What a method needs to score the images of one class; built once per class."""

    class_name: str
    dataset: str | None
    domain: str  # "industrial" | "medical": blur and score rules
    has_masks: bool = True  # False: a classification-only set
    text: Any = None  # (E, 2) anchors, or the state per-image text needs
    memory: Any = None  # few-shot memory bank, set by fit_memory()


@dataclass
class Prediction:
    """Raw outputs of a batch (or, concatenated, of a class) before per-class normalisation."""

    maps: torch.Tensor  # (B, S, S) at the input size
    scores: torch.Tensor  # (B,) raw image score
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device) -> Prediction:
        return Prediction(
            self.maps.to(device),
            self.scores.to(device),
            {k: v.to(device) for k, v in self.extra.items()},
        )

    @staticmethod
    def cat(parts: list[Prediction]) -> Prediction:
        """One Prediction from the batches of a class."""
        extra = {k: torch.cat([p.extra[k] for p in parts]) for k in parts[0].extra}
        return Prediction(
            torch.cat([p.maps for p in parts]), torch.cat([p.scores for p in parts]), extra
        )


class Method(nn.Module):
    """A zero-/few-shot anomaly detector on a shared, frozen open_clip backbone.

    Every trainable tensor and every persistent state lives under `self.adapters`: that is
    what checkpoints hold and what optimisers see. The backbone is never trained and stays in
    eval mode whatever `train()` is called with.
    """

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for `aaclip methods`
    Config: ClassVar[type]  # dataclass: the `model` section of an ExperimentConfig
    PRESETS: ClassVar[dict[str, Callable[..., Any]]] = {}  # profile -> ExperimentConfig factory
    batch_independent: ClassVar[bool] = True  # False: a released quirk mixes a batch's images
    needs_masks: ClassVar[bool] = True  # False: trains on classification-only sets too
    # ---- facts about the method, read by results, analysis, the CLI and the ablations
    published_name: ClassVar[str | None] = None  # `method` in results/published_results.csv
    # How the authors' release chose the checkpoint behind its published numbers (notebook 07).
    release_selection: ClassVar[str] = "not recorded in this repository"
    # The files `aaclip import-released` takes: its option (text, image, released) -> what
    # the file is; {} = no importer. `load_released` reads them.
    RELEASED_FILES: ClassVar[dict[str, str]] = {}
    # Overrides a protocol grid (aaclip.medical) applies per mode: "zero_shot", "few_shot";
    # a mode the method has (also with []) is one it supports.
    PROTOCOLS: ClassVar[dict[str, list[str]]] = {}
    # Overrides of the variant runs of notebooks 04–05 under `smoke` (fewer epochs than the
    # main run); quick mode caps every stage at 1 epoch instead.
    SMOKE_VARIANT_EPOCHS: ClassVar[tuple[str, ...]] = ("train.max_epochs=4",)
    # The paper's component ablation (AA-CLIP: Table 3), cumulative rows of overrides; None:
    # the frozen CLIP baseline row. {}: the method has none (notebook 05 skips it).
    COMPONENT_ABLATION: ClassVar[dict[str, list[str] | None]] = {}

    adapters: nn.ModuleDict

    def __init__(self, backbone: Backbone, cfg: Any = None) -> None:
        super().__init__()
        self.cfg = cfg if cfg is not None else self.Config()
        self.backbone = backbone
        self.clip = backbone.clip  # registered as a submodule: .to(device) moves it
        self.adapters = nn.ModuleDict()
        self.precision = "fp32"  # "bf16": the backbone runs under autocast on GPU
        self.clip.requires_grad_(False)

    def autocast(self):
        """The autocast context of this method's precision on its device."""
        return runtime.autocast(self.device, self.precision)

    # ------------------------------------------------------------------ description
    def input_spec(self) -> InputSpec:
        """Image size and normalisation for the training and evaluation loaders."""
        return InputSpec(self.backbone.image_size)

    @classmethod
    def ablations(cls, cfg: Any) -> dict[str, list[str]]:
        """Named override lists, one per switch worth ablating (notebook 05), in order.
        Default: the class's static `ABLATIONS` table, if it has one."""
        return dict(getattr(cls, "ABLATIONS", {}))

    @classmethod
    def schedule(cls, cfg: Any) -> list[Stage]:
        """Training stages of a config, in order ([] for a training-free method)."""
        return []

    def stages(self) -> list[Stage]:
        return self.schedule(self.cfg)

    # ------------------------------------------------------------------ training
    def param_groups(self, stage: Stage) -> list[dict[str, Any]]:
        """torch.optim parameter groups of a stage (nanoGPT's configure_optimizers)."""
        raise NotImplementedError(f"{self.name} has no training stage")

    def start_stage(self, stage: Stage, classes: list[str], dataset: str | None) -> None:
        """Per-stage set-up before the first step; a pure function of the weights (re-run on
        resume)."""

    def start_epoch(self, stage: Stage, epoch: int) -> None:
        """Called before the first step of each epoch (1-based), also the epoch a resumed run
        restarts; must not draw random numbers (IQE-CLIP: its epoch-1-only dropout)."""

    def loss(self, stage: Stage, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Named loss terms of one batch (tensors on the device); the loop optimises the sum."""
        raise NotImplementedError(f"{self.name} has no training stage")

    def skipped_groups(self, stage: Stage, batch: dict[str, Any]) -> tuple[int, ...]:
        """Indices into `param_groups(stage)` that this batch must not update. Their
        parameters stay in the loss's graph; after backward the loop sets their gradients to
        None, so the optimiser neither moves them nor advances their state (Adam skips a
        parameter without a gradient). MVFA: its seg adapters on a classification-only batch,
        as the release steps only its det optimiser there. Default: none."""
        return ()

    def after_step(self, stage: Stage) -> None:
        """Called after each optimiser step (DP-CLIP: momentum prototype update)."""

    def after_epoch(self, stage: Stage, dataset: Any) -> None:
        """Called after each epoch, before its checkpoint, with the stage's training dataset
        (MVFA: rebuilds the few-shot memory bank from the augmented normal supports)."""

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A GradScaler for fp16 training (None: plain backward and step)."""
        return None

    def forward(self, stage: Stage, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """= loss(): lets DistributedDataParallel wrap a method."""
        return self.loss(stage, batch)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def prepare_class(
        self,
        class_name: str,
        dataset: str | None,
        domain: str,
        has_masks: bool = True,
        description: str | None = None,
    ) -> ClassContext:
        """The text (and any other per-class state) to score images of one class;
        `description` replaces the class's own text (a user's own images)."""
        anchors = self.class_anchors(class_name, dataset, description)
        anchors = full_precision(anchors) if anchors is not None else None
        return ClassContext(class_name, dataset, domain, has_masks, anchors)

    def fit_memory(self, ctx: ClassContext, normal_images: torch.Tensor) -> ClassContext:
        """Few-shot: fill ctx.memory from reference normal images (N, 3, S, S) of the class,
        prepared as `input_spec()` says (the pass loads them from `data.memory_records`).
        Zero-shot methods ignore it."""
        return ctx

    def predict(self, images: torch.Tensor, ctx: ClassContext) -> Prediction:
        """Raw maps (B, S, S) and image scores (B,) of a batch of one class."""
        raise NotImplementedError

    def score_rule(
        self,
        pred: Prediction,
        ctx: ClassContext,
        norm: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The method's score rule: maps (B, S, S) and image scores (B,) from raw outputs.

        The one hook every exit scores with. Each raw term (a map, a score) goes through
        `norm` before the terms are combined: `norm=None` (as they are) is the per-image rule
        of `predict`, `calibrate`, `export` and `Detector` (each image alone, raw values);
        `class_scores` (`test`) is the same rule with every term min-max normalised over the
        class's images. So a test score is the rule applied to the very per-image terms that
        `predict` sees, only normalised over the class.

        Default: AA-CLIP's rule (map; industrial 0.5 max map + 0.5 p, medical max map).
        """
        return scoring.score_rule(pred.maps, pred.scores, ctx.domain, norm)

    def class_scores(
        self, pred: Prediction, ctx: ClassContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class maps in [0, 1] and image scores from the raw outputs of all its images:
        `score_rule` with each term min-max normalised over the class (override the rule,
        not this)."""
        return self.score_rule(pred, ctx, scoring.minmax)

    def class_anchors(
        self, class_name: str, dataset: str | None, description: str | None = None
    ) -> torch.Tensor | None:
        """(E, 2) text anchors (normal, abnormal) of a class; None where text is per image."""
        return None

    # ------------------------------------------------------------------ state
    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Everything trainable or persistent, flat names; never the backbone; dtypes kept."""
        return dict(self.adapters.state_dict())

    def load_adapter_state(
        self, state: dict[str, torch.Tensor], source: str = "checkpoint"
    ) -> None:
        """Load `adapter_state()` output; a missing, unexpected or mis-shaped tensor is named."""
        own = self.adapter_state()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"{source}: weights do not fit {self.name}: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}"
            )
        for k, v in state.items():
            if own[k].shape != v.shape:
                raise ValueError(
                    f"{source}: {k} has shape {tuple(v.shape)}, {self.name} expects "
                    f"{tuple(own[k].shape)}"
                )
        self.adapters.load_state_dict(state)
        self.on_load()

    def on_load(self) -> None:
        """Hook after trained weights were loaded (AA-CLIP: its text is now adapted)."""

    def import_released(self, path: str) -> None:
        """Load the authors' released checkpoint file (`aaclip import-released --released`)."""
        raise ValueError(f"import-released: {self.name} has no importer for released files")

    def load_released(self, files: dict[str, str | None]) -> tuple[int, list[str]]:
        """`aaclip import-released`: load the authors' files, `{option: path or None}` for
        each option of `RELEASED_FILES`; returns the stage the weights reach and the files
        read. Default: one file, `--released` (`import_released`)."""
        given = {k: v for k, v in files.items() if v}
        if not self.RELEASED_FILES:
            raise ValueError(f"import-released: --method {self.name} has no importer")
        wrong = sorted(set(given) - set(self.RELEASED_FILES))
        if wrong or "released" not in given:
            options = ", ".join(f"--{k} ({v})" for k, v in self.RELEASED_FILES.items())
            raise ValueError(f"import-released --method {self.name}: give {options}")
        self.import_released(given["released"])
        return len(self.stages()), [given["released"]]

    def train(self, mode: bool = True) -> Method:
        """Train mode for the adapters only; the frozen backbone stays in eval mode."""
        super().train(mode)
        self.clip.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def dtype(self) -> torch.dtype:
        """What inputs are cast to: float64 under the fp64 precision, else float32."""
        return self.backbone.dtype
