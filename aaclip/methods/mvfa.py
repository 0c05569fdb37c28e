"""MVFA-AD (CVPR 2024): multi-level seg/det adapters on a frozen CLIP, zero- and few-shot.

As the released code computes it (MediaBrain-SJTU/MVFA-AD @ a30bf7b; spec: seed-methods.md
section 4). After each level l (blocks 6, 12, 18, 24 of ViT-L-14-336) a *seg* and a *det*
adapter act on the block output x (all tokens, CLS included): h = LeakyReLU(W1 x), y =
LeakyReLU(W2 h), both without bias; the residual stream continues as 0.8 x + 0.1 y_seg +
0.1 y_det. The bottleneck tokens h (the joint width, 768) are what is scored: CLS dropped,
L2-normalised, 100 h.T against the anchors T of MVFA's prompt ensemble (normal, abnormal).

- text map A_l: softmax over the two states *after* bilinear upsampling of the logits;
- det score s_l: token-level softmax, p(abnormal) averaged over the tokens (no upsampling);
- few-shot memory bank (`aaclip.memory`): per level, the tokens of the x11-augmented normal
  supports with the current adapters, CLS included; D_l = min (1 - cos) per test token.

Scoring (min-max over the whole test set): few-shot segmentation sets: map = 0.5 mm(sum A_l)
+ 0.5 mm(sum up D_l(seg)), image = max of the map; few-shot classification-only sets: image =
0.5 mm(sum s_l) + 0.5 mm(mean pixel of sum up D_l(det)); zero-shot: map = sum A_l, image =
sum s_l. Training: det = sum_l BCEWithLogits(s_l, y) (a probability fed as a logit: switch
`det_bce`), seg = sum_l Focal(P_l, M) + Dice(P_l[abn], M) on segmentation sets only. On a
classification-only batch (set or source) the loss is det only and only the det adapters are
updated, as released: the seg adapters stay in the graph (0.1 y_seg feeds the residual
stream, so the det gradient of the earlier levels flows through them) and receive a gradient,
but `skipped_groups` leaves them out of the step (the release steps only its det optimiser;
its seg Adam state does not advance, and the seg gradients it accumulates there are cleared
by the next segmentation step's `zero_grad` before any seg step).

Module names mirror the released checkpoints (`seg_adapters.<i>.fc1.0.weight`, ...), so
`ckpt/{few-shot,zero-shot}/<Obj>.pth` imports with `import_released`. For forks (ClipMPCAD):
the adapter block is the class attribute `adapter_block` (or override `build_adapter`), the
residual mix is `mix`, the prompts come from `cfg.prompt_set` (a bundled name or a JSON file,
see `aaclip.prompt_sets`) through `prompt_sentences`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from aaclip import backbone as bb
from aaclip import config as C
from aaclip import losses
from aaclip.augment_x11 import augment_x11_batch
from aaclip.backbone import Backbone
from aaclip.memory import MemoryBank, memory_score
from aaclip.methods.base import ClassContext, InputSpec, Method, Prediction, Stage
from aaclip.prompt_sets import PromptSet, load_prompt_set, read_prompt_set
from aaclip.runtime import full_precision
from aaclip.scoring import as_is, upsample

PROTOCOL_MODES = ("few_shot", "zero_shot")
DET_BCE = ("logits_on_probability", "probability")
AMP = ("fp16_noscaler", "fp16_scaler", "off")
NORMALIZE = ("none", "clip")
MEMORY_AUGMENT = ("mvfa_x11", "none")
TEXT_CHUNK = 128  # sentences per text-encoder call
MEMORY_CHUNK = 16  # support images per forward when fitting a bank


@dataclass
class MVFAConfig:
    # protocol: few_shot (train on the target's k-shot supports x11, memory bank) or
    # zero_shot (leave-one-out: train on the other sets' test splits, no bank)
    protocol: str = "few_shot"
    # architecture (None: blocks 6, 12, 18, 24 of 24, i.e. 1/4 .. 1 of the vision depth)
    levels: tuple[int, ...] | None = None
    residual: tuple[float, float, float] = (0.8, 0.1, 0.1)  # x, y_seg, y_det
    logit_scale: float = 100.0
    prompt_set: str = "mvfa"  # bundled prompt set name, or a path to a prompt-set JSON file
    # switches (released behaviour first)
    normalize: str = "none"  # none (released: ToTensor only) | clip (CLIP mean/std)
    det_bce: str = "logits_on_probability"  # released double sigmoid | probability
    amp: str = "fp16_noscaler"  # CUDA only: fp16_noscaler (released) | fp16_scaler | off
    memory_augment: str = "mvfa_x11"  # bank from the x11 variants of the normals | none
    memory_each_epoch: bool = True  # rebuild the bank after every few-shot epoch (released)
    # schedule (one stage; the released runs use batch 1)
    epochs: int = 50
    batch_size: int = 1
    few_shot_lr: float = 1e-3
    zero_shot_lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)


def _check(cfg: MVFAConfig) -> None:
    for key, allowed in (
        ("protocol", PROTOCOL_MODES),
        ("det_bce", DET_BCE),
        ("amp", AMP),
        ("normalize", NORMALIZE),
        ("memory_augment", MEMORY_AUGMENT),
    ):
        value = getattr(cfg, key)
        if value not in allowed:
            raise ValueError(f"model.{key} must be one of {', '.join(allowed)}; got {value!r}")
    if len(cfg.residual) != 3:
        raise ValueError(f"model.residual needs 3 weights (x, y_seg, y_det), got {cfg.residual}")


# --------------------------------------------------------------------------- presets
def mvfa_data(root: str, target: str, shots: int) -> C.DataConfig:
    """One MVFA set: k-shot supports (train + memory bank) and its test split, as
    `data_prep.mvfa` writes them under `<root>/<Obj>_AD/` (k = 0: test split only; the
    leave-one-out training set is made by the protocol, `aaclip.medical`)."""
    folder = f"{root}/{target}_AD"
    shot_file = f"{folder}/{shots}-shot.jsonl" if shots else ""
    return C.DataConfig(
        train_records=shot_file,
        train_dataset=target,
        test_records=(f"{folder}/test.jsonl",),
        test_datasets=(target,),
        test_domains=("medical",),
        memory_records=(shot_file,) if shots else (),
    )


def _paper(data_root: str = "data", target: str = "Brain", shots: int = 4) -> C.ExperimentConfig:
    """ViT-L-14-336 at 240 px, k-shot on one MVFA set under `data_root/<Obj>_AD` (the
    whole grid, zero-shot included: `aaclip protocol mvfa --method mvfa`)."""
    return C.ExperimentConfig(
        method="mvfa",
        profile="paper",
        backbone=C.BackboneConfig(image_size=240, require_weights=True),
        model=MVFAConfig(),
        eval=C.EvalConfig(batch_size=16),
        data=mvfa_data(data_root, target, shots),
    )


def _smoke(
    data_root: str = "data/synthetic", target: str = "Brain", shots: int = 4
) -> C.ExperimentConfig:
    """Tiny random CLIP on the embedded MVFA-layout sets (`<data_root>/mvfa`). Batch and
    learning rate are larger and epochs fewer than released, as the model starts from random
    weights and must train in seconds; every switch is the released one."""
    return C.ExperimentConfig(
        method="mvfa",
        profile="smoke",
        backbone=C.BackboneConfig(name="aaclip-tiny", image_size=96),
        model=MVFAConfig(epochs=8, batch_size=8, few_shot_lr=1e-2, zero_shot_lr=3e-3),
        eval=C.EvalConfig(batch_size=32),
        data=mvfa_data(f"{data_root}/mvfa", target, shots),
    )


# --------------------------------------------------------------------------- blocks
class MVFAAdapter(nn.Module):
    """h = LeakyReLU(W1 x) (the scored bottleneck token), y = LeakyReLU(W2 h) (added back
    to the residual stream); both linear maps without bias, PyTorch's default init.
    Parameter names are the released ones (`fc1.0.weight`, `fc2.0.weight`)."""

    def __init__(self, width: int, bottleneck: int) -> None:
        super().__init__()
        self.fc1 = nn.Sequential(nn.Linear(width, bottleneck, bias=False), nn.LeakyReLU())
        self.fc2 = nn.Sequential(nn.Linear(bottleneck, width, bias=False), nn.LeakyReLU())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc1(x)
        return h, self.fc2(h)


def encode_text_trimmed(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's `encode_text` on tokens cut after the last end-of-text token of the batch.

    With a causal mask and end-of-text pooling, the padding after that token never reaches
    the pooled feature, so the result is CLIP's own (same operations, shorter sequences: the
    420 ensemble sentences encode several times faster). Other text towers: `encode_text`.
    """
    if getattr(clip, "text_pool_type", "argmax") != "argmax" or clip.attn_mask is None:
        return clip.encode_text(tokens)
    n = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :n]
    cast = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens).to(cast) + clip.positional_embedding[:n].to(cast)
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:n, :n]))
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    proj = clip.text_projection
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def normalise_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Patch tokens (CLS dropped) divided by their norm, as released (no epsilon)."""
    x = tokens[:, 1:]
    return x / x.norm(dim=-1, keepdim=True)


def token_logits(tokens: torch.Tensor, anchors: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, L, 2) logits scale * h_hat . T of tokens (B, 1 + L, C) against anchors (C, 2) or
    per-image anchors (B, C, 2)."""
    return scale * torch.matmul(normalise_tokens(tokens), anchors.to(tokens.dtype))


def text_probs(
    tokens: torch.Tensor, anchors: torch.Tensor, size: int, scale: float
) -> torch.Tensor:
    """(B, 2, size, size): softmax over the states of the logits upsampled to `size`."""
    logits = token_logits(tokens, anchors, scale)
    b, n, c = logits.shape
    g = int(round(n**0.5))
    grid = logits.permute(0, 2, 1).reshape(b, c, g, g)
    return upsample(grid, size).softmax(dim=1)


def detection_score(tokens: torch.Tensor, anchors: torch.Tensor, scale: float) -> torch.Tensor:
    """(B,) mean over the tokens of the token-level p(abnormal)."""
    return token_logits(tokens, anchors, scale).softmax(dim=-1)[..., 1].mean(dim=-1)


# --------------------------------------------------------------------------- method
class MVFA(Method):
    """Frozen CLIP + per-level seg/det adapters; text maps, det scores, few-shot memory."""

    name = "mvfa"
    summary = "MVFA-AD (CVPR 2024): multi-level seg/det adapters, few-shot memory bank"
    published_name = "MVFA-AD"
    release_selection = (
        "few-shot: best of 50 per-epoch tests on the test set (pixel + image AUROC, strict >); "
        "zero-shot: best of about 250 tests on the test set, the first before any step (>=)"
    )
    RELEASED_FILES = {"released": "ckpt/{few-shot,zero-shot}/<Obj>.pth"}
    Config = MVFAConfig
    PRESETS = {"paper": _paper, "smoke": _smoke}
    PROTOCOLS = {
        "zero_shot": ["model.protocol=zero_shot"],
        "few_shot": ["model.protocol=few_shot"],
    }
    ABLATIONS = {
        "det_bce_probability": ["model.det_bce=probability"],
        "clip_normalisation": ["model.normalize=clip"],
        "bank_without_x11": ["model.memory_augment=none"],
        "quick_gelu": ["backbone.quick_gelu=true"],
    }
    needs_masks = False  # classification-only sets train too: det loss, det adapters stepped
    adapter_block: ClassVar[type[nn.Module]] = MVFAAdapter

    def __init__(self, backbone: Backbone, cfg: MVFAConfig | None = None) -> None:
        super().__init__(backbone, cfg)
        _check(self.cfg)
        self.levels = backbone.levels(self.cfg.levels)
        self.prompts = self.load_prompts(self.cfg.prompt_set)
        # seg adapters first, then det adapters: the released construction order, so the
        # same seed gives the same initial weights
        self.adapters["seg_adapters"] = nn.ModuleList(
            [self.build_adapter(i, "seg") for i in range(len(self.levels))]
        )
        self.adapters["det_adapters"] = nn.ModuleList(
            [self.build_adapter(i, "det") for i in range(len(self.levels))]
        )
        self._anchors: dict[str, torch.Tensor] = {}
        self.epoch_memory: dict[str, MemoryBank] = {}  # bank of the last few-shot epoch

    # ---------------------------------------------------------------- building blocks
    def build_adapter(self, index: int, kind: str) -> nn.Module:
        """The adapter of level `index` ("seg" or "det"): vision width -> joint width."""
        return self.adapter_block(self.backbone.vision_width, self.backbone.embed_dim)

    @staticmethod
    def load_prompts(name: str) -> PromptSet:
        """A bundled prompt set by name, or a prompt-set JSON file by path."""
        return read_prompt_set(name) if name.endswith(".json") else load_prompt_set(name)

    @property
    def seg_adapters(self) -> nn.ModuleList:
        return self.adapters["seg_adapters"]

    @property
    def det_adapters(self) -> nn.ModuleList:
        return self.adapters["det_adapters"]

    def mix(self, x: torch.Tensor, y_seg: torch.Tensor, y_det: torch.Tensor) -> torch.Tensor:
        """The residual stream after a level: 0.8 x + 0.1 y_seg + 0.1 y_det."""
        a, b, c = self.cfg.residual
        return a * x + b * y_seg + c * y_det

    def input_spec(self) -> InputSpec:
        if self.cfg.normalize == "none":
            return InputSpec(self.backbone.image_size, None, None)
        return InputSpec(self.backbone.image_size)

    def autocast(self):
        """fp16 autocast on CUDA unless `amp=off` (released: fp16); else the backbone's."""
        if self.device.type == "cuda" and self.cfg.amp != "off":
            return torch.autocast("cuda", dtype=torch.float16)
        return super().autocast()

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        if self.device.type == "cuda" and self.cfg.amp == "fp16_scaler":
            return torch.amp.GradScaler("cuda")
        return None  # released: fp16 backward without a scaler

    # ---------------------------------------------------------------- text
    def prompt_sentences(self, class_name: str) -> tuple[list[str], list[str]]:
        """(normal, abnormal) sentences for a prompt class name."""
        return self.prompts.sentences(class_name)

    def prompt_name(self, class_name: str) -> str:
        """What fills the prompts for a folder/class name (`Chest` -> `Chest X-ray film`)."""
        return self.prompts.class_name(class_name)

    @torch.no_grad()
    def anchors_from_text(self, name: str) -> torch.Tensor:
        """(E, 2) anchors from the frozen text encoder: each group's sentences encoded and
        L2-normalised, averaged, re-normalised (column 0 normal, 1 abnormal)."""
        columns = []
        with self.autocast():
            for sentences in self.prompt_sentences(name):
                tokens = self.backbone.tokenizer(sentences).to(self.device)
                f = torch.cat(
                    [
                        encode_text_trimmed(self.clip, tokens[i : i + TEXT_CHUNK])
                        for i in range(0, len(tokens), TEXT_CHUNK)
                    ]
                )
                f = f / f.norm(dim=-1, keepdim=True)
                mean = f.mean(dim=0)
                columns.append(mean / mean.norm())
        return torch.stack(columns, dim=1)

    def class_anchors(
        self, class_name: str, dataset: str | None, description: str | None = None
    ) -> torch.Tensor:
        name = description or self.prompt_name(class_name)
        if name not in self._anchors:
            self._anchors[name] = self.anchors_from_text(name)
        return self._anchors[name].to(self.device)

    # ---------------------------------------------------------------- image
    def encode_image(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level the seg and det bottleneck tokens (B, 1 + L, E), CLS first. Both
        kinds of adapter stay in the graph whatever the batch (see `skipped_groups`)."""
        visual = self.clip.visual
        x = bb.embed_patches(visual, images)
        seg, det = [], []
        last = max(self.levels)
        for i, block in enumerate(visual.transformer.resblocks):
            if i >= last:
                break
            x = block(x)
            if i + 1 in self.levels:
                k = self.levels.index(i + 1)
                h_seg, y_seg = self.seg_adapters[k](x)
                h_det, y_det = self.det_adapters[k](x)
                x = self.mix(x, y_seg, y_det)
                seg.append(h_seg)
                det.append(h_det)
        return seg, det

    def predict(self, images: torch.Tensor, ctx: ClassContext) -> Prediction:
        """Raw outputs: maps = sum_l A_l, scores = sum_l s_l; with a memory bank also
        `memory_map` (segmentation sets) or `memory_score` (classification-only sets)."""
        size = images.shape[-1]
        scale = self.cfg.logit_scale
        with self.autocast():
            seg, det = self.encode_image(images)
            anchors = ctx.text
            maps = sum(full_precision(text_probs(t, anchors, size, scale)[:, 1]) for t in seg)
            scores = sum(full_precision(detection_score(t, anchors, scale)) for t in det)
        extra = {}
        if ctx.memory is not None:
            tokens = seg if ctx.has_masks else det
            memory_map = ctx.memory.anomaly_map([full_precision(t) for t in tokens], size)
            if ctx.has_masks:
                extra["memory_map"] = memory_map
            else:
                extra["memory_score"] = memory_score(memory_map)
        return Prediction(maps, scores, extra)

    def score_rule(
        self, pred: Prediction, ctx: ClassContext, norm=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MVFA's rules (see the module docstring); `class_scores` min-maxes each term over
        the whole test set, one image alone takes them as they are."""
        norm = norm or as_is
        if "memory_map" in pred.extra:  # few-shot, segmentation set
            maps = 0.5 * norm(pred.maps) + 0.5 * norm(pred.extra["memory_map"])
            return maps, maps.flatten(1).amax(dim=1)
        if "memory_score" in pred.extra:  # few-shot, classification-only set
            scores = 0.5 * norm(pred.scores) + 0.5 * norm(pred.extra["memory_score"])
            return norm(pred.maps), scores
        return norm(pred.maps), norm(pred.scores)  # zero-shot

    # ---------------------------------------------------------------- memory bank
    @torch.no_grad()
    def memory_tokens(self, images: torch.Tensor, seg: bool) -> list[torch.Tensor]:
        """Per level (N, 1 + L, E) seg (or det) tokens of reference images, CLS included."""
        parts: list[list[torch.Tensor]] = []
        for i in range(0, len(images), MEMORY_CHUNK):
            with self.autocast():
                s, d = self.encode_image(images[i : i + MEMORY_CHUNK].to(self.device))
            parts.append([full_precision(t) for t in (s if seg else d)])
        return [torch.cat(level) for level in zip(*parts, strict=True)]

    def fit_memory(self, ctx: ClassContext, normal_images: torch.Tensor) -> ClassContext:
        """The few-shot bank of a class from its normal supports (x11-augmented unless
        `memory_augment=none`): seg tokens for segmentation sets, det tokens otherwise."""
        images = normal_images
        if self.cfg.memory_augment == "mvfa_x11":
            images, _ = augment_x11_batch(normal_images)
        was_training = self.training
        self.eval()
        ctx.memory = MemoryBank(self.memory_tokens(images, ctx.has_masks))
        self.train(was_training)
        return ctx

    def after_epoch(self, stage: Stage, dataset: Any) -> None:
        """Few-shot: rebuild each class's bank from the (augmented) normal training items
        with the current adapters, as the release does after every epoch. Kept in
        `epoch_memory`; evaluation fits its own bank from `data.memory_records`."""
        if self.cfg.protocol != "few_shot" or not self.cfg.memory_each_epoch:
            return
        by_class: dict[str, list[int]] = {}
        for i in range(len(dataset)):
            rec = dataset.record(i)
            if rec.label == 0:
                by_class.setdefault(rec.class_name, []).append(i)
        was_training = self.training
        self.eval()
        for name, items in by_class.items():
            images = torch.stack([dataset[i]["image"] for i in items])
            seg = dataset.class_has_masks[name]
            self.epoch_memory[name] = MemoryBank(self.memory_tokens(images, seg))
        self.train(was_training)

    # ---------------------------------------------------------------- training
    @classmethod
    def schedule(cls, cfg: MVFAConfig) -> list[Stage]:
        few = cfg.protocol == "few_shot"
        lr = cfg.few_shot_lr if few else cfg.zero_shot_lr
        return [
            Stage(
                "adapters",
                cfg.epochs,
                cfg.batch_size,
                lr,
                cfg.betas,
                augment="mvfa_x11" if few else "none",
                one_class_per_batch=True,
            )
        ]

    def param_groups(self, stage: Stage) -> list[dict]:
        """Two groups, the released two optimisers (same settings): seg, det adapters."""
        return [
            {"params": list(self.seg_adapters.parameters())},
            {"params": list(self.det_adapters.parameters())},
        ]

    def start_stage(self, stage: Stage, classes: list[str], dataset: str | None) -> None:
        for name in classes:  # anchors once, from the frozen text encoder
            self.class_anchors(name, dataset)

    def skipped_groups(self, stage: Stage, batch: dict) -> tuple[int, ...]:
        """A batch without an image of a segmentation set leaves the seg group (0) out of
        the step: its det loss still back-propagates through the seg adapters, but only the
        det adapters are updated, as the release steps only its det optimiser there."""
        return () if _any_masks(batch) else (0,)

    def loss(self, stage: Stage, batch: dict) -> dict[str, torch.Tensor]:
        """det on every image; seg on the images of segmentation sets. The seg adapters stay
        in the graph on every batch (a batch without a segmentation image: `skipped_groups`
        keeps them from being updated)."""
        cfg = self.cfg
        images, labels = batch["image"], batch["label"].to(batch["image"].dtype)
        seg_items = torch.as_tensor(batch["class_has_masks"], device=images.device).bool()
        names = batch["class_name"]
        per_image = torch.stack([self.class_anchors(n, None) for n in names])  # (B, E, 2)
        seg, det = self.encode_image(images)
        det_loss = images.new_zeros(())
        for tokens in det:
            s = full_precision(detection_score(tokens, per_image, cfg.logit_scale))
            if cfg.det_bce == "logits_on_probability":
                det_loss = det_loss + F.binary_cross_entropy_with_logits(s, labels)
            else:
                det_loss = det_loss + F.binary_cross_entropy(s, labels)
        terms = {"detection": det_loss}
        if seg_items.any():
            size = images.shape[-1]
            keep = seg_items.nonzero().flatten()
            mask = (batch["mask"][keep] > 0.5).float()
            seg_loss = images.new_zeros(())
            for tokens in seg:
                p = full_precision(text_probs(tokens[keep], per_image[keep], size, cfg.logit_scale))
                seg_loss = seg_loss + losses.focal_loss(p, mask) + losses.dice_loss(p[:, 1], mask)
            terms["segmentation"] = seg_loss
        return terms

    # ---------------------------------------------------------------- released files
    def import_released(self, path: str | Path) -> None:
        """Load `ckpt/{few-shot,zero-shot}/<Obj>.pth` ({'seg_adapters', 'det_adapters'},
        state dicts of the two ModuleLists)."""
        from aaclip.checkpoints import CheckpointMismatchError

        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or not {"seg_adapters", "det_adapters"} <= set(blob):
            found = sorted(blob)[:4] if isinstance(blob, dict) else type(blob).__name__
            hint = "; an AA-CLIP file: use --method aaclip" if _is_aaclip_file(blob) else ""
            raise CheckpointMismatchError(
                f"{path}: not an MVFA-AD checkpoint (expected 'seg_adapters' and "
                f"'det_adapters' entries, found {found}){hint}"
            )
        state = {
            f"{group}.{k}": v
            for group in ("seg_adapters", "det_adapters")
            for k, v in blob[group].items()
        }
        try:
            self.load_adapter_state(state, str(path))
        except ValueError as err:
            raise CheckpointMismatchError(
                f"{err} (released MVFA-AD files fit ViT-L-14-336, levels 6, 12, 18, 24)"
            ) from None


def _any_masks(batch: dict) -> bool:
    """Whether a training batch holds an image of a segmentation set."""
    return bool(torch.as_tensor(batch["class_has_masks"]).bool().any())


def _is_aaclip_file(blob: object) -> bool:
    return isinstance(blob, dict) and bool({"text_adapter", "image_adapter"} & set(blob))
