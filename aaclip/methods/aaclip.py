"""AA-CLIP (CVPR 2025): residual adapters on a frozen CLIP, as the released code computes them.

Stage "text" trains the text adapters against frozen V-V-surgery patch features; stage
"image" trains the image adapters against the fixed adapted anchors. Module and parameter
names mirror the released checkpoints (`text_adapter`, `image_adapter` with
`layer_adapters`, `seg_proj`, `det_proj`), so the authors' files import with a plain
`load_state_dict` (`load_released`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from aaclip import backbone as bb
from aaclip import config as C
from aaclip import losses, scoring, text
from aaclip.adapters import Adapter, Projection, residual_adapt, xavier_init
from aaclip.backbone import Backbone
from aaclip.methods.base import ClassContext, Method, Prediction, Stage
from aaclip.methods.clip import anchor_prediction
from aaclip.runtime import full_precision

IMAGE_ADAPTERS = ("residual", "vanilla", "none")


@dataclass
class AAClipConfig:
    # architecture (None: the paper's block counts scaled to the backbone's depth)
    text_adapt_weight: float = 0.1  # residual weight of the text adapters
    text_adapt_until: int | None = None  # 3 of 12 text blocks
    image_adapt_weight: float = 0.1  # residual weight of the image adapters
    image_adapt_until: int | None = None  # 6 of 24 vision blocks
    levels: tuple[int, ...] | None = None  # 1/4, 1/2, 3/4, 1 of the vision depth
    surgery_blocks: int | None = None  # 19 of 24 vision blocks
    text_norm_weight: float = 0.1  # weight of the disentangle loss
    # switches (released defects; see the README)
    relu: bool = False  # LeakyReLU after the seg/det projections (released default off)
    image_adapter: str = "residual"  # residual (released) | vanilla | none: Table 3 rows
    vv_attention_axis: str = "batch"  # batch (released defect 2) | tokens
    class_descriptions: str = "official"  # official | plain
    stage1_levels: str = "last"  # last (released defect 1) | all
    stage1_cls_loss: bool = False  # released has none (defect 3); paper Eq. 4 has one
    # schedule per stage
    stage1_epochs: int = 5  # stage "text"
    stage1_batch_size: int = 16  # stage "text"
    stage1_lr: float = 1e-5  # stage "text" (Adam)
    stage2_epochs: int = 20  # stage "image"
    stage2_batch_size: int = 2  # stage "image"
    stage2_lr: float = 5e-4  # stage "image" (Adam)
    betas: tuple[float, float] = (0.5, 0.999)  # Adam, both stages
    milestones: tuple[int, ...] = (16000, 32000)  # iterations, stage 2
    gamma: float = 0.5  # lr factor at each milestone


def _paper(data_root: str = "data") -> C.ExperimentConfig:
    """ViT-L-14-336 at 518 px, trained on VisA (full-shot), tested zero-shot on ten targets."""
    return C.paper_experiment("aaclip", AAClipConfig(), data_root)


def _smoke(data_root: str = "data/synthetic") -> C.ExperimentConfig:
    """Tiny random CLIP on the embedded set. Learning rates and epochs are larger than the
    paper's because the model starts from random weights; every switch is the released one."""
    model = AAClipConfig(
        class_descriptions="plain",
        stage1_epochs=4,
        stage1_batch_size=8,
        stage1_lr=1e-3,
        stage2_epochs=20,
        stage2_batch_size=8,
        stage2_lr=5e-3,
    )
    return C.smoke_experiment("aaclip", model, data_root)


class AAClip(Method):
    """Frozen CLIP + trainable text adapters (stage "text") and image adapters ("image")."""

    name = "aaclip"
    summary = "AA-CLIP (CVPR 2025): text then image residual adapters, disentangle loss"
    Config = AAClipConfig
    PRESETS = {"paper": _paper, "smoke": _smoke}
    published_name = "AA-CLIP"
    release_selection = (
        "the released test script scores every epoch's checkpoint on the test set; "
        "the paper reportedly reports epoch 15 (full-shot)"
    )
    RELEASED_FILES = {"text": "text_adapter.pth, stage 1", "image": "image_adapter_N.pth, stage 2"}
    SMOKE_VARIANT_EPOCHS = ("model.stage1_epochs=1", "model.stage2_epochs=4")
    COMPONENT_ABLATION = {  # paper Table 3, cumulative
        "CLIP": None,  # frozen CLIP, no training
        "+ linear projector": ["model.image_adapter=none", "model.stage1_epochs=0"],
        "+ vanilla adapter": ["model.image_adapter=vanilla", "model.stage1_epochs=0"],
        "+ residual image adapter": ["model.stage1_epochs=0"],
        "+ text adapter": ["model.text_norm_weight=0"],
        "+ disentangle loss": [],  # the full model
    }

    @classmethod
    def ablations(cls, cfg: AAClipConfig) -> dict[str, list[str]]:
        """One override list per released-defect switch. The description switch flips
        whatever the profile uses (paper: official -> plain; smoke: plain -> official)."""
        other = "plain" if cfg.class_descriptions == "official" else "official"
        return {
            "stage1_levels_all": ["model.stage1_levels=all"],
            "vv_attention_tokens": ["model.vv_attention_axis=tokens"],
            f"class_descriptions_{other}": [f"model.class_descriptions={other}"],
            "stage1_cls_loss": ["model.stage1_cls_loss=true"],
            "quick_gelu": ["backbone.quick_gelu=true"],
            "no_text_adaptation": ["model.stage1_epochs=0"],
        }

    def __init__(self, backbone: Backbone, cfg: AAClipConfig | None = None):
        super().__init__(backbone, cfg)
        cfg = self.cfg
        b = backbone
        self.levels = b.levels(cfg.levels)
        self.text_adapt_until = cfg.text_adapt_until or bb.scaled_count(3, 12, b.text_depth)
        if cfg.image_adapter not in IMAGE_ADAPTERS:
            raise ValueError(
                f"model.image_adapter must be one of {IMAGE_ADAPTERS}, got {cfg.image_adapter!r}"
            )
        self.image_adapt_until = cfg.image_adapt_until or bb.scaled_count(6, 24, b.vision_depth)
        if cfg.image_adapter == "none":  # Table 3 "+ linear projector": projections only
            self.image_adapt_until = 0
        self.surgery_blocks = cfg.surgery_blocks or bb.scaled_count(19, 24, b.vision_depth)
        self.adapters["text_adapter"] = nn.ModuleList(
            [Adapter(b.text_width) for _ in range(self.text_adapt_until)]
            + [Projection(b.text_width, b.embed_dim, relu=True)]  # replaces text_projection
        )
        self.adapters["image_adapter"] = nn.ModuleDict(
            {
                "layer_adapters": nn.ModuleList(
                    [Adapter(b.vision_width) for _ in range(self.image_adapt_until)]
                ),
                "seg_proj": nn.ModuleList(
                    [Projection(b.vision_width, b.embed_dim, cfg.relu) for _ in self.levels]
                ),
                "det_proj": Projection(b.vision_width, b.embed_dim, cfg.relu),
            }
        )
        xavier_init(self.text_adapter, self.image_adapter)
        self.text_adapted = False  # True once stage "text" ran or trained weights were loaded
        self._dataset: str | None = None
        self._anchors: dict[str, torch.Tensor] = {}

    @property
    def text_adapter(self) -> nn.ModuleList:
        return self.adapters["text_adapter"]

    @property
    def image_adapter(self) -> nn.ModuleDict:
        return self.adapters["image_adapter"]

    # ---------------------------------------------------------------- text
    def encode_text(self, tokens: torch.Tensor, adapted: bool = True) -> torch.Tensor:
        """Text features (N, E); `adapted=False` is CLIP's own encode_text."""
        clip = self.clip
        if not adapted:
            return clip.encode_text(tokens)
        x = clip.token_embedding(tokens) + clip.positional_embedding
        for i, block in enumerate(clip.transformer.resblocks):
            x = block(x, attn_mask=clip.attn_mask)
            if i < self.text_adapt_until:
                x = residual_adapt(x, self.text_adapter[i], self.cfg.text_adapt_weight)
        x = clip.ln_final(x)
        eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return self.text_adapter[-1](eot)

    def anchors_from_text(self, description: str, adapted: bool = True) -> torch.Tensor:
        """Anchors (E, 2) for a description: column 0 normal, column 1 abnormal."""
        return text.ensemble_anchors(
            lambda t: self.encode_text(t, adapted),
            self.backbone.tokenizer,
            description,
            self.device,
        )

    def anchors_for(
        self, class_names: list[str], dataset: str | None, adapted: bool = True
    ) -> dict[str, torch.Tensor]:
        """Anchors for each distinct class name, with the configured description table."""
        mode = self.cfg.class_descriptions
        return {
            name: self.anchors_from_text(text.class_text(name, dataset, mode, None), adapted)
            for name in dict.fromkeys(class_names)
        }

    def class_anchors(
        self, class_name: str, dataset: str | None, description: str | None = None
    ) -> torch.Tensor:
        desc = text.class_text(class_name, dataset, self.cfg.class_descriptions, description)
        return self.anchors_from_text(desc, adapted=self.text_adapted)

    # ---------------------------------------------------------------- image
    def encode_image(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Adapted patch features per level (B, L, E), L2-normalised, and the detection feature."""
        visual = self.clip.visual
        adapters = self.image_adapter["layer_adapters"]
        x = bb.embed_patches(visual, images)
        tokens = []
        for i, block in enumerate(visual.transformer.resblocks):
            x = block(x)
            if i < self.image_adapt_until:
                if self.cfg.image_adapter == "vanilla":  # Table 3: the adapter replaces x
                    x = adapters[i](x)
                else:
                    x = residual_adapt(x, adapters[i], self.cfg.image_adapt_weight)
            if i + 1 in self.levels:
                tokens.append(visual.ln_post(x[:, 1:]))
        seg = [
            F.normalize(proj(t), dim=-1)
            for proj, t in zip(self.image_adapter["seg_proj"], tokens, strict=True)
        ]
        det = F.normalize(self.image_adapter["det_proj"](tokens[-1]), dim=-1).mean(1)
        return seg, det

    def stage1_features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Frozen stage-1 features: surgery patch embeddings + the CLIP image embedding.

        Returns per-level (B, L, E) features with the L2-normalised image embedding added to
        every token (as the released code does), and the image embedding itself.
        """
        patches, image_embedding = bb.surgery_features(
            self.clip, images, self.levels, self.surgery_blocks, self.cfg.vv_attention_axis
        )
        return [p + image_embedding.unsqueeze(1) for p in patches], image_embedding

    def predict(self, images: torch.Tensor, ctx: ClassContext) -> Prediction:
        return anchor_prediction(self, images, ctx)

    # ---------------------------------------------------------------- training
    @classmethod
    def schedule(cls, cfg: AAClipConfig) -> list[Stage]:
        return [
            Stage("text", cfg.stage1_epochs, cfg.stage1_batch_size, cfg.stage1_lr, cfg.betas,
                  augment="geometric"),
            Stage("image", cfg.stage2_epochs, cfg.stage2_batch_size, cfg.stage2_lr, cfg.betas,
                  cfg.milestones, cfg.gamma, augment="geometric+color"),
        ]  # fmt: skip

    def param_groups(self, stage: Stage) -> list[dict]:
        module = self.text_adapter if stage.name == "text" else self.image_adapter
        return [{"params": list(module.parameters())}]

    def start_stage(self, stage: Stage, classes: list[str], dataset: str | None) -> None:
        self._dataset = dataset
        if stage.name == "text":
            self.text_adapted = True
            return
        was_training = self.training
        self.eval()
        with torch.no_grad(), self.autocast():  # stage "image": fixed (adapted) anchors
            anchors = self.anchors_for(classes, dataset, adapted=self.text_adapted)
        self._anchors = {k: full_precision(v) for k, v in anchors.items()}
        self.train(was_training)

    def loss(self, stage: Stage, batch: dict) -> dict[str, torch.Tensor]:
        if stage.name == "text":
            return self._text_loss(batch)
        return self._image_loss(batch)

    def _text_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """Segmentation of the stage-1 features against adapted anchors, + disentangle."""
        cfg = self.cfg
        images, masks = batch["image"], batch["mask"]
        features, image_embedding = self.stage1_features(images)
        names = batch["class_name"]
        per_class = self.anchors_for(names, self._dataset)
        anchors = torch.stack([per_class[n] for n in names], dim=0)
        size = images.shape[-1]
        use = (
            range(len(self.levels))[-1:] if cfg.stage1_levels == "last" else range(len(self.levels))
        )
        terms = {
            f"segmentation_level{self.levels[i]}": losses.segmentation_loss(
                scoring.training_probs(features[i], anchors, size), masks
            )
            for i in use
        }
        terms["disentangle"] = cfg.text_norm_weight * losses.disentangle_loss(anchors)
        if cfg.stage1_cls_loss:
            logits = torch.einsum("be,bec->bc", image_embedding, anchors)
            terms["classification"] = F.cross_entropy(logits, batch["label"])
        return terms

    def _image_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """Classification of the detection feature + segmentation loss per level."""
        images, masks = batch["image"], batch["mask"]
        seg, det = self.encode_image(images)
        a = torch.stack([self._anchors[n] for n in batch["class_name"]], dim=0).to(det.dtype)
        logits = torch.einsum("be,bec->bc", det, a)
        terms = {"classification": F.cross_entropy(full_precision(logits), batch["label"])}
        size = images.shape[-1]
        for level, f in zip(self.levels, seg, strict=True):
            probs = full_precision(scoring.training_probs(f, a, size))
            terms[f"segmentation_level{level}"] = losses.segmentation_loss(probs, masks)
        return terms

    def on_load(self) -> None:
        # Without stage-1 epochs the anchors come from the frozen CLIP text encoder.
        self.text_adapted = self.cfg.stage1_epochs > 0

    def load_released(self, files: dict[str, str | None]) -> tuple[int, list[str]]:
        """`--text text_adapter.pth` and/or `--image image_adapter_N.pth` (a DP-CLIP file is
        refused by name)."""
        from aaclip.methods.dpclip import refuse_for_aaclip

        text_path, image_path = files.get("text"), files.get("image")
        if files.get("released") or not (text_path or image_path):
            raise ValueError("import-released --method aaclip: give --text and/or --image")
        refuse_for_aaclip(image_path)
        load_released(self, text_path, image_path)
        return (2 if image_path else 1), [p for p in (text_path, image_path) if p]


def load_released(
    model: AAClip, text_path: str | Path | None, image_path: str | Path | None
) -> None:
    """Import the authors' `text_adapter.pth` / `image_adapter[_N].pth` into an AAClip model."""
    from aaclip.checkpoints import CheckpointMismatchError

    for path, key, module in (
        (text_path, "text_adapter", model.text_adapter),
        (image_path, "image_adapter", model.image_adapter),
    ):
        if path is None:
            continue
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(blob, dict) and {"seg_adapters", "det_adapters"} <= set(blob):
            raise CheckpointMismatchError(
                f"{path}: an MVFA-AD checkpoint (seg_adapters/det_adapters), not AA-CLIP; "
                "use --method mvfa --released FILE"
            )
        if not isinstance(blob, dict) or key not in blob:
            raise CheckpointMismatchError(f"{path}: no '{key}' entry; is this an AA-CLIP file?")
        own = module.state_dict()
        state = blob[key]
        bad = [
            f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
            for k, v in state.items()
            if k in own and own[k].shape != v.shape
        ]
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if bad or missing or unexpected:
            raise CheckpointMismatchError(
                f"{path}: does not fit this model (shapes: {bad[:2]}, missing: {missing[:2]}, "
                f"unexpected: {unexpected[:2]}); check the backbone and the relu switch"
            )
        module.load_state_dict(state)
    model.on_load()
