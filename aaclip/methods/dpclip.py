"""DP-CLIP ("Feature Decoupling and Channel Purification"): AA-CLIP's image stage with GRN.

No text stage: the anchors come from the frozen CLIP text encoder with AA-CLIP's prompt
ensemble and class descriptions. The image adapters and projections are AA-CLIP's with a
Global Response Normalisation between the linear map and the activation, and training adds a
momentum decoupling loss that pushes the batch means of anomalous and normal patch features
away from momentum prototypes of the other kind. Inference and scoring are AA-CLIP's.

Read from the authors' code (jeffreyFF/DP-CLIP @ c698119; see the README's DP-CLIP section);
every released behaviour that changes numbers is a switch of `DPClipConfig`. Module and
parameter names mirror the released `image_adapter` layout, so `image_adapter_N.pth` files
import with a plain `load_state_dict` (`load_released`). The prototypes live in
`adapters["prototypes"]` as buffers: every checkpoint holds them (the release keeps them in
module globals and loses them on resume).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from aaclip import backbone as bb
from aaclip import config as C
from aaclip import losses, scoring, text
from aaclip.adapters import GRNAdapter, GRNProjection, PrototypeMemory, residual_adapt, xavier_init
from aaclip.backbone import Backbone
from aaclip.methods.base import ClassContext, Method, Prediction, Stage
from aaclip.methods.clip import anchor_prediction, frozen_anchors
from aaclip.runtime import full_precision


@dataclass
class DPClipConfig:
    # architecture (None: the paper's block counts scaled to the backbone's depth)
    image_adapt_weight: float = 0.1
    image_adapt_until: int | None = None  # adapters after blocks 0..5 of 24
    levels: tuple[int, ...] | None = None  # 1/4, 1/2, 3/4, 1 of the vision depth
    decoupling_weight: float = 0.1  # 0: no decoupling term, no prototypes
    momentum: float = 0.999  # alpha of the prototype update
    # switches (released behaviour; see the README's DP-CLIP section)
    relu: bool = False  # LeakyReLU after the projections (released scripts: off)
    grn_axis: str = "tokens"  # tokens (intent, default) | batch (released: mixes a batch)
    grn_test_batch: int = 32  # with grn_axis=batch: images per GRN group at test (released 32)
    prototype_scope: str = "shared"  # shared (released: one pair for all levels) | per_level
    stale_prototype_update: str = "reuse"  # reuse (released) | skip
    decoupling_grid: int | None = None  # None: the token grid; released hard-codes 37 (518 px)
    class_descriptions: str = "official"  # official | plain
    # schedule (one stage, "image")
    epochs: int = 20
    batch_size: int = 3  # also the GRN group in training with grn_axis=batch
    lr: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.999)
    milestones: tuple[int, ...] = (16000, 32000)  # iterations: never reached, lr never decays
    gamma: float = 0.5


CHOICES = {
    "grn_axis": ("tokens", "batch"),
    "prototype_scope": ("shared", "per_level"),
    "stale_prototype_update": ("reuse", "skip"),
    "class_descriptions": ("official", "plain"),
}


def _paper(data_root: str = "data") -> C.ExperimentConfig:
    """ViT-L-14-336 at 518 px, trained on VisA (full-shot), tested zero-shot on ten targets;
    test batches of 32 as released (only matters with grn_axis=batch)."""
    return C.ExperimentConfig(
        method="dpclip",
        profile="paper",
        backbone=C.BackboneConfig(require_weights=True),
        model=DPClipConfig(),
        eval=C.EvalConfig(batch_size=32),
        data=C.paper_data(data_root),
    )


def _paper_visa(data_root: str = "data") -> C.ExperimentConfig:
    """The VisA row: trained on MVTec (full-shot), tested on VisA (no released command)."""
    cfg = _paper(data_root)
    cfg.profile = "paper_visa"
    cfg.data = C.DataConfig(
        train_records=f"{data_root}/MVTec/test.jsonl",
        train_dataset="MVTec",
        test_records=(f"{data_root}/VisA/test.jsonl",),
        test_datasets=("VisA",),
    )
    return cfg


def _released(data_root: str = "data") -> C.ExperimentConfig:
    """`paper` with every switch at its released value: GRN over the batch axis (train batch
    3, test batch 32 per class in list order) and the hard-coded 37x37 decoupling grid."""
    cfg = _paper(data_root)
    cfg.profile = "released"
    cfg.model = DPClipConfig(grn_axis="batch", decoupling_grid=37)
    return cfg


def _smoke(data_root: str = "data/synthetic") -> C.ExperimentConfig:
    """Tiny random CLIP on the embedded set. Learning rate and batch are larger than the
    paper's because the model starts from random weights; every switch is the default."""
    return C.ExperimentConfig(
        method="dpclip",
        profile="smoke",
        backbone=C.smoke_backbone(),
        model=DPClipConfig(class_descriptions="plain", epochs=2, batch_size=4, lr=3e-3),
        eval=C.EvalConfig(batch_size=32),
        data=C.smoke_data(data_root),
    )


class DPClip(Method):
    """Frozen CLIP + GRN image adapters and projections (stage "image"), frozen-text anchors."""

    name = "dpclip"
    summary = "DP-CLIP: AA-CLIP's image adapters with GRN, momentum decoupling loss, frozen text"
    Config = DPClipConfig
    published_name = "DP-CLIP"
    release_selection = (
        "test.py scores every saved epoch on the test set (or a per-target <dataset>.pth "
        "when present)"
    )
    RELEASED_FILES = {"image": "image_adapter_N.pth"}
    PRESETS = {"paper": _paper, "paper_visa": _paper_visa, "released": _released, "smoke": _smoke}
    ABLATIONS = {
        "grn_batch_axis": ["model.grn_axis=batch"],
        "per_level_prototypes": ["model.prototype_scope=per_level"],
        "skip_stale_update": ["model.stale_prototype_update=skip"],
        "no_decoupling": ["model.decoupling_weight=0"],
        "relu": ["model.relu=true"],
        "quick_gelu": ["backbone.quick_gelu=true"],
    }

    def __init__(self, backbone: Backbone, cfg: DPClipConfig | None = None):
        super().__init__(backbone, cfg)
        cfg = self.cfg
        for key, allowed in CHOICES.items():
            if getattr(cfg, key) not in allowed:
                raise ValueError(f"model.{key} must be one of {allowed}, got {getattr(cfg, key)!r}")
        b = backbone
        self.levels = b.levels(cfg.levels)
        self.image_adapt_until = cfg.image_adapt_until or bb.scaled_count(6, 24, b.vision_depth)
        # The released GRN over the batch axis makes an image's outputs depend on its batch.
        self.batch_independent = cfg.grn_axis == "tokens"
        self.adapters["image_adapter"] = nn.ModuleDict(
            {
                "layer_adapters": nn.ModuleList(
                    GRNAdapter(b.vision_width, cfg.grn_axis) for _ in range(self.image_adapt_until)
                ),
                "seg_proj": nn.ModuleList(
                    [GRNProjection(b.vision_width, b.embed_dim, cfg.relu) for _ in self.levels]
                ),
                "det_proj": GRNProjection(b.vision_width, b.embed_dim, cfg.relu),
            }
        )
        xavier_init(self.image_adapter)
        pairs = len(self.levels) if cfg.prototype_scope == "per_level" else 1
        self.adapters["prototypes"] = PrototypeMemory(pairs, b.embed_dim)
        self._anchors: dict[str, torch.Tensor] = {}
        self._fresh = [False] * pairs  # pair k got new batch means in the last loss()
        self._warned = False

    @property
    def image_adapter(self) -> nn.ModuleDict:
        return self.adapters["image_adapter"]

    @property
    def prototypes(self) -> PrototypeMemory:
        return self.adapters["prototypes"]

    def import_released(self, path: str | Path) -> None:
        """Load the authors' `image_adapter[_N].pth` (see `load_released`)."""
        load_released(self, path)

    def load_released(self, files: dict[str, str | None]) -> tuple[int, list[str]]:
        """`--image image_adapter_N.pth`; DP-CLIP has no text stage."""
        if files.get("text") or files.get("released") or not files.get("image"):
            raise ValueError("DP-CLIP has no text stage: pass its image_adapter_N.pth as --image")
        load_released(self, files["image"])
        return len(self.stages()), [files["image"]]

    # ---------------------------------------------------------------- text and image
    def class_anchors(
        self, class_name: str, dataset: str | None, description: str | None = None
    ) -> torch.Tensor:
        desc = text.class_text(class_name, dataset, self.cfg.class_descriptions, description)
        return frozen_anchors(self, desc)

    def encode_image(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Adapted patch features per level (B, L, E), L2-normalised, and the detection feature
        (mean of the L2-normalised level-last tokens, not re-normalised)."""
        visual = self.clip.visual
        adapters = self.image_adapter["layer_adapters"]
        x = bb.embed_patches(visual, images)
        tokens = []
        for i, block in enumerate(visual.transformer.resblocks):
            x = block(x)
            if i < self.image_adapt_until:
                x = residual_adapt(x, adapters[i], self.cfg.image_adapt_weight)
            if i + 1 in self.levels:
                tokens.append(visual.ln_post(x[:, 1:]))
        seg = [
            F.normalize(proj(t), dim=-1)
            for proj, t in zip(self.image_adapter["seg_proj"], tokens, strict=True)
        ]
        det = F.normalize(self.image_adapter["det_proj"](tokens[-1]), dim=-1).mean(1)
        return seg, det

    def prepare_class(
        self,
        class_name: str,
        dataset: str | None,
        domain: str,
        has_masks: bool = True,
        description: str | None = None,
    ) -> ClassContext:
        if not self.batch_independent and not self._warned:
            self._warned = True
            warnings.warn(
                "dpclip: model.grn_axis=batch (released behaviour): the layer-adapter GRN "
                "normalises over the images of a batch, so maps and scores depend on which "
                f"images share a batch (groups of {self.cfg.grn_test_batch} in loader order, "
                "as released with eval.batch_size >= that; smaller loader batches differ)",
                UserWarning,
                stacklevel=2,
            )
        return super().prepare_class(class_name, dataset, domain, has_masks, description)

    def predict(self, images: torch.Tensor, ctx: ClassContext) -> Prediction:
        if self.batch_independent:
            return anchor_prediction(self, images, ctx)
        n = self.cfg.grn_test_batch  # released GRN groups: test.py's batches of 32
        return Prediction.cat(
            [anchor_prediction(self, images[i : i + n], ctx) for i in range(0, len(images), n)]
        )

    # ---------------------------------------------------------------- training
    @classmethod
    def schedule(cls, cfg: DPClipConfig) -> list[Stage]:
        return [
            Stage("image", cfg.epochs, cfg.batch_size, cfg.lr, cfg.betas, cfg.milestones,
                  cfg.gamma, augment="geometric+color"),
        ]  # fmt: skip

    def param_groups(self, stage: Stage) -> list[dict]:
        return [{"params": list(self.image_adapter.parameters())}]

    def start_stage(self, stage: Stage, classes: list[str], dataset: str | None) -> None:
        was_training = self.training
        self.eval()
        with torch.no_grad(), self.autocast():
            self._anchors = {
                name: full_precision(self.class_anchors(name, dataset))
                for name in dict.fromkeys(classes)
            }
        self.train(was_training)

    def loss(self, stage: Stage, batch: dict) -> dict[str, torch.Tensor]:
        """Classification of the detection feature, segmentation per level, and the weighted
        decoupling term (0 when the batch has no anomalous or no normal token)."""
        images, masks = batch["image"], batch["mask"]
        seg, det = self.encode_image(images)
        a = torch.stack([self._anchors[n] for n in batch["class_name"]], dim=0).to(det.dtype)
        logits = torch.einsum("be,bec->bc", det, a)
        terms = {"classification": F.cross_entropy(full_precision(logits), batch["label"])}
        size = images.shape[-1]
        for level, f in zip(self.levels, seg, strict=True):
            probs = full_precision(scoring.training_probs(f, a, size))
            terms[f"segmentation_level{level}"] = losses.segmentation_loss(probs, masks)
        dec = self.decoupling(seg, masks) if self.cfg.decoupling_weight > 0 else None
        terms["decoupling"] = (
            self.cfg.decoupling_weight * dec
            if dec is not None
            else full_precision(seg[0].new_zeros(()))
        )
        return terms

    def token_mask(self, masks: torch.Tensor, tokens: int) -> torch.Tensor:
        """(B, L) bool: a token is anomalous iff the nearest-resized mask pixel is > 0.5 (the
        top-left pixel of its patch: no majority vote)."""
        grid = math.isqrt(tokens)
        want = self.cfg.decoupling_grid or grid
        if want != grid:
            raise ValueError(
                f"model.decoupling_grid={want} does not fit the {grid}x{grid} token grid at "
                f"{masks.shape[-1]} px (the release hard-codes 37: 518 px, patch 14); set "
                "model.decoupling_grid=null to derive it from the image size"
            )
        small = F.interpolate(masks.float(), size=(grid, grid), mode="nearest")
        return small[:, 0].flatten(1) > 0.5

    def decoupling(self, seg: list[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        """Unweighted decoupling loss of a batch, summed over levels, in level order.

        A level whose batch has both anomalous and normal tokens gives unit means a, n; an
        uninitialised prototype pair contributes (a . n)^2 and is set to (a, n) at once (so
        with one shared pair the later levels of the same batch already use it); an initialised
        one contributes ((a . P_n)^2 + (n . P_a)^2) / 2. The means are remembered for the
        momentum update of `after_step`.
        """
        mem = self.prototypes
        abnormal = self.token_mask(masks, seg[0].shape[1])
        total = full_precision(seg[0].new_zeros(()))
        for i, f in enumerate(seg):
            means = losses.token_prototypes(full_precision(f), abnormal)
            if means is None:
                continue
            a, n = means
            k = i if mem.pairs > 1 else 0
            if bool(mem.ready[k]):
                term = losses.decoupling_loss(a, n, mem.abnormal[k], mem.normal[k])
            else:
                term = losses.decoupling_loss(a, n)
                mem.initialise(k, a.detach(), n.detach())
            mem.remember(k, a.detach(), n.detach())
            self._fresh[k] = True
            total = total + term
        return total

    def after_step(self, stage: Stage) -> None:
        """Momentum update of every initialised pair towards its last batch means; after a
        batch without anomalous tokens `reuse` re-applies the previous means, `skip` does not."""
        if self.cfg.decoupling_weight <= 0:
            return
        mem = self.prototypes
        for k in range(mem.pairs):
            stale = not self._fresh[k]
            if not bool(mem.ready[k] & mem.has_last[k]):
                continue
            if stale and self.cfg.stale_prototype_update == "skip":
                continue
            mem.step(k, self.cfg.momentum)
        self._fresh = [False] * mem.pairs


# --------------------------------------------------------------------------- released files
def released_layout(blob: object) -> str | None:
    """Which authors' checkpoint a loaded `.pth` is: "dpclip" (GRN keys), "aaclip" (an
    AA-CLIP text or image adapter), or None."""
    if not isinstance(blob, dict):
        return None
    state = blob.get("image_adapter")
    if isinstance(state, dict):
        return "dpclip" if any(".grn." in k for k in state) else "aaclip"
    return "aaclip" if "text_adapter" in blob else None


def refuse_for_aaclip(path: str | Path | None) -> None:
    """Refuse, by name, a DP-CLIP file given to AA-CLIP's importer."""
    from aaclip.checkpoints import CheckpointMismatchError

    if path is not None and released_layout(_read(path)) == "dpclip":
        raise CheckpointMismatchError(
            f"{path}: a DP-CLIP adapter file (GRN weights), not AA-CLIP; use --method dpclip"
        )


def _read(path: str | Path) -> object:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_released(model: DPClip, image_path: str | Path) -> None:
    """Import the authors' `image_adapter[_N].pth` (`{"epoch", "image_adapter",
    "image_optimizer"}`) into a DPClip model; a file that does not fit is refused in one line.

    The file holds no prototypes (the release keeps them in module globals): they start unset.
    `relu` cannot be read from the keys (LeakyReLU has no weights): it comes from the config
    (released scripts: False).
    """
    from aaclip.checkpoints import CheckpointMismatchError

    blob = _read(image_path)
    layout = released_layout(blob)
    if layout == "aaclip":
        raise CheckpointMismatchError(
            f"{image_path}: an AA-CLIP adapter file (no GRN weights), not DP-CLIP; use "
            "--method aaclip"
        )
    if layout is None:
        raise CheckpointMismatchError(
            f"{image_path}: no 'image_adapter' entry; not a DP-CLIP image_adapter_N.pth"
        )
    state, module = blob["image_adapter"], model.image_adapter
    own = module.state_dict()
    bad = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if bad or missing or unexpected:
        raise CheckpointMismatchError(
            f"{image_path}: does not fit dpclip on {model.backbone.name} (shapes: {bad[:2]}, "
            f"missing: {missing[:2]}, unexpected: {unexpected[:2]}); check the backbone, "
            "image_adapt_until and levels"
        )
    module.load_state_dict(state)
    fresh = PrototypeMemory(model.prototypes.pairs, model.backbone.embed_dim)
    model.prototypes.load_state_dict(fresh.to(model.device).state_dict())
    model.on_load()
