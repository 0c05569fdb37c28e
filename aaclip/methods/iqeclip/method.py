"""IQE-CLIP (arXiv 2506.10730) on a frozen open_clip backbone, as its release computes it.

Per image: the patch tokens of four levels (raw residual stream, CLS dropped) go through one
Linear each; the global image feature g conditions r class tokens, which replace the EOT token
of two fixed templates; the text tower runs with one shallow and one deep prompt per later
block, all through one shared projection, and is read at the last class token. A query
module (IQM, `qformer.py`) shared over the levels turns learned queries, conditioned on g too,
into two "query" anchors per level. Two logit branches per level: patch-vs-query cosines
("new") and patch-vs-text cosines scaled by a learned temperature ("raw").

Module and parameter names follow the release's checkpoint (`trainable_linearlayer`,
`New_Lan_Embed`, `iqm`, `query_tokens`, `query_linear` and the text `prompt*` tensors), so a
release file loads with `load_released` without renaming a key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from aaclip import config as C
from aaclip import losses, scoring
from aaclip.backbone import Backbone
from aaclip.methods.base import ClassContext, InputSpec, Method, Prediction, Stage
from aaclip.methods.iqeclip.qformer import QueryModule
from aaclip.runtime import full_precision

# sic "a abnormal"; `<|class|>` is no special token: the BPE splits it into five ordinary ones
TEMPLATES = ("a photo of a normal <|class|>.", "a photo of a abnormal <|class|>.")
MVFA_SETS = ("Brain", "Liver", "Retina_RESC", "Retina_OCT2017", "Chest", "Histopathology")
CLASSIFICATION_ONLY = ("Retina_OCT2017", "Chest", "Histopathology")  # MVFA sets without masks
AMP = ("fp16_noscaler", "fp16_scaler", "off")
DET_BCE = ("logits_on_probability", "probability")
NORMALIZE = ("none", "clip")
PROTOCOLS = ("zero", "few")


@dataclass
class IQEClipConfig:
    # architecture (None: scaled to the backbone; the release's values on ViT-L-14-336)
    levels: tuple[int, ...] | None = None  # blocks read (6, 12, 18, 24): 1/4 ... 4/4 of the depth
    prompt_len: int = 2  # r class tokens, replacing the EOT token of the templates
    deep_prompt_len: int = 1  # n prompt tokens after SOS: one shallow + one per later block
    iqm_layers: int = 4  # query module (Q-Former) layers
    iqm_heads: int = 8  # query module attention heads
    iqm_ffn: int | None = None  # query module FFN width; None: 4 x the joint width (3072)
    iqm_dropout: float = 0.1  # query module dropout (when on: see dropout_after_eval)
    # which release script's rules apply (the presets set it from the shots)
    protocol: str = "zero"  # zero: image score = sums of token means | few: pixel means
    raw_weight: float = 0.2  # pixel map = blur(raw_weight raw + (1 - raw_weight) new)
    blur_sigma: float = 8.0  # pixel-map Gaussian (scipy gaussian_filter, mode reflect)
    blur_truncate: float = 4.0  # Gaussian radius = int(truncate * sigma + 0.5) = 32 px
    classification_only: tuple[str, ...] = CLASSIFICATION_ONLY  # classes: detection loss only
    # switches (released behaviour by default; see the README)
    use_global: bool = True  # condition class tokens and queries on g (CLI flag is store_false)
    dropout_after_eval: bool = False  # True: IQM dropout on in every training step
    det_bce: str = "logits_on_probability"  # released double sigmoid | probability (plain BCE)
    amp: str = "fp16_noscaler"  # CUDA fp16, no GradScaler (released) | fp16_scaler | off
    normalize: str = "none"  # none (released: ToTensor only) | clip (mean/std)
    # schedule (None: the release's for the protocol)
    epochs: int | None = None  # stage "iqe"; None: 50 zero-shot, 10 few-shot
    batch_size: int | None = None  # stage "iqe"; None: 128 zero-shot, 32 few-shot
    lr: float = 1e-4  # Adam, every trainable tensor but the temperature
    temperature_lr: float = 0.01  # Adam, the learned temperature's own group
    betas: tuple[float, float] = (0.5, 0.999)  # Adam
    augment: str | None = None  # training recipe; None: none zero-shot, mvfa_x11 few-shot


# --------------------------------------------------------------------------- presets
def mvfa_config(
    data_root: str = "data",
    target: str = "Brain",
    shots: int | None = None,
    train_records: str | None = None,
) -> C.ExperimentConfig:
    """MVFA's medical protocol on ViT-L-14-336 at 240 px for one target set.

    Sets are `<data_root>/<Obj>_AD` with the records `data_prep.mvfa` writes (`test.jsonl`,
    `<k>-shot.jsonl`). `shots=k`: train on the target's k-shot supports (few-shot release:
    10 epochs, batch 32, image score from pixel means); None: leave-one-out zero-shot on the
    test splits of the five other sets (50 epochs, batch 128), read from `train_records`
    (default `<data_root>/leave_one_out/<Obj>.jsonl`; `protocols.leave_one_out` and the grid
    write such a merged file themselves). Seed 42 as both training scripts.
    """
    if target not in MVFA_SETS:
        raise ValueError(f"unknown MVFA set {target!r}; choose from {', '.join(MVFA_SETS)}")
    few = shots is not None
    if train_records is None:
        train_records = (
            f"{data_root}/{target}_AD/{shots}-shot.jsonl"
            if few
            else f"{data_root}/leave_one_out/{target}.jsonl"
        )
    model = IQEClipConfig(protocol="few" if few else "zero")
    return C.paper_experiment(
        "iqeclip",
        model,
        data_root,
        backbone=C.BackboneConfig(image_size=240, require_weights=True),
        train=C.TrainConfig(seed=42),
        eval=C.EvalConfig(batch_size=32),
        data=C.DataConfig(
            train_records=train_records,
            train_dataset="MVFA" if few else f"MVFA leave-one-out {target}",
            test_records=(f"{data_root}/{target}_AD/test.jsonl",),
            test_datasets=(target,),
            test_domains=("medical",),
        ),
    )


def _smoke(data_root: str = "data/synthetic") -> C.ExperimentConfig:
    """Tiny random CLIP at 64 px, trained on the embedded medical training classes and tested
    zero-shot on the held-out medical classes. Larger lr, a short schedule, geometric
    augmentation and a blur scaled to 64 px (sigma 4) for the tiny model; every switch is
    the released one."""
    model = IQEClipConfig(epochs=10, batch_size=6, lr=5e-3, augment="geometric", blur_sigma=4.0)
    return C.smoke_experiment(
        "iqeclip",
        model,
        data_root,
        backbone=C.BackboneConfig(name="aaclip-tiny", image_size=64),
        data=C.DataConfig(
            train_records=f"{data_root}/medical_train.jsonl",
            train_dataset="synthetic-medical",
            test_records=(f"{data_root}/medical_test.jsonl",),
            test_datasets=("synthetic-medical",),
            test_domains=("medical",),
        ),
    )


# --------------------------------------------------------------------------- text path
def splice_class_tokens(
    embedded: torch.Tensor, eot: list[int], class_tokens: torch.Tensor
) -> torch.Tensor:
    """Template token embeddings (T, C, W) with the EOT of template t (index eot[t]) replaced
    by the r class tokens of each image (B, r, W): the rest shifts right by r - 1 and the
    sequence is cut back to C. Returns (B, T, C, W)."""
    b, r, _ = class_tokens.shape
    length = embedded.shape[1]
    out = []
    for t, e in enumerate(eot):
        head = embedded[t, :e].expand(b, -1, -1)
        tail = embedded[t, e + 1 : length - r + 1].expand(b, -1, -1)
        out.append(torch.cat([head, class_tokens, tail], dim=1))
    return torch.stack(out, dim=1)


def insert_prompt(x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """(N, C, W) -> the n prompt vectors (n, W) inserted after SOS, the last n tokens dropped."""
    n = prompt.shape[0]
    return torch.cat([x[:, :1], prompt.expand(x.shape[0], -1, -1), x[:, 1:-n]], dim=1)


def replace_prompt(x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """(N, C, W) with positions 1..n replaced by the prompt vectors (n, W)."""
    n = prompt.shape[0]
    return torch.cat([x[:, :1], prompt.expand(x.shape[0], -1, -1), x[:, 1 + n :]], dim=1)


def strip_prompt(x: torch.Tensor, n: int) -> torch.Tensor:
    """(N, C, W) -> (N, C - n, W) without positions 1..n."""
    return torch.cat([x[:, :1], x[:, 1 + n :]], dim=1)


# --------------------------------------------------------------------------- maps
def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """`scipy.ndimage.gaussian_filter(maps, sigma, truncate=truncate, axes=(1, 2))` for
    (B, H, W): separable, radius int(truncate * sigma + 0.5), mode "reflect" (the edge pixel is
    repeated: d c b a | a b c d | d c b a, not torch's reflect), computed in float64."""
    radius = int(truncate * sigma + 0.5)
    dev = maps.device
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=dev)
    kernel = torch.exp(-0.5 * x**2 / sigma**2)
    kernel = kernel / kernel.sum()
    out = maps.double().unsqueeze(1)  # (B, 1, H, W)
    for dim, shape in ((2, (1, 1, -1, 1)), (3, (1, 1, 1, -1))):
        n = out.shape[dim]
        i = torch.arange(-radius, n + radius, device=dev) % (2 * n)
        i = torch.where(i >= n, 2 * n - 1 - i, i)  # symmetric extension, any radius
        out = F.conv2d(out.index_select(dim, i), kernel.view(shape))
    return out[:, 0].to(maps.dtype)


def logits_grid(logits: torch.Tensor) -> torch.Tensor:
    """Token logits (B, L, 2) -> (B, 2, g, g), g = sqrt(L)."""
    b, n, c = logits.shape
    g = math.isqrt(n)
    return logits.permute(0, 2, 1).reshape(b, c, g, g)


def upsampled_probs(logits: torch.Tensor, size: int) -> torch.Tensor:
    """Softmax over the two states after bilinear upsampling: (B, 2, size, size)."""
    return scoring.upsample(logits_grid(full_precision(logits)), size).softmax(dim=1)


def token_score(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens of p(abnormal): (B,)."""
    return full_precision(logits).softmax(dim=-1)[..., 1].mean(dim=-1)


@dataclass
class IQEOutputs:
    """Everything one forward pass computes for a batch (per-level lists in level order)."""

    global_feature: torch.Tensor  # g (B, E), not normalised
    class_tokens: torch.Tensor  # (B, r, W)
    text: torch.Tensor  # (B, 2, E), L2-normalised, column 0 normal
    queries_in: torch.Tensor  # (B, 2, E), before the IQM
    patch: list[torch.Tensor]  # F_l (B, L, E)
    queries: list[torch.Tensor]  # Q_l (B, 2, E), before normalisation
    new_logits: list[torch.Tensor]  # (B, L, 2) patch-vs-query cosines
    raw_logits: list[torch.Tensor]  # (B, L, 2) exp(tau) * patch-vs-text cosines


# --------------------------------------------------------------------------- modules
class GlobalConv(nn.Module):
    """Conv1d(1 -> k, kernel 3, zero padding 1) along the feature axis: (B, E) -> (B, k, E)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.fc = nn.Conv1d(1, k, 3, padding=1)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.fc(g.unsqueeze(1))


class LevelProjections(nn.Module):
    """One Linear (with bias) per level, on the patch tokens of that level."""

    def __init__(self, levels: int, width: int, dim: int) -> None:
        super().__init__()
        self.fc = nn.ModuleList([nn.Linear(width, dim) for _ in range(levels)])

    def forward(self, tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        return [fc(t) for fc, t in zip(self.fc, tokens, strict=True)]


class ClassTokens(nn.Module):
    """C = P + Conv1d(g) (or P alone), and the raw branch's temperature."""

    def __init__(self, r: int, width: int) -> None:
        super().__init__()
        self.prompt_query = nn.Parameter(torch.empty(1, r, width))
        nn.init.trunc_normal_(self.prompt_query)  # std 1, cut at +-2
        self.prompt_linear1 = GlobalConv(r)
        self.prompt_temp = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, g: torch.Tensor, use_global: bool) -> torch.Tensor:
        p = self.prompt_query.expand(g.shape[0], -1, -1)
        return p + self.prompt_linear1(g) if use_global else p


# --------------------------------------------------------------------------- the method
class IQEClip(Method):
    """Frozen CLIP + image-conditioned prompt tokens, deep text prompts and a query module."""

    name = "iqeclip"
    summary = "IQE-CLIP: image-conditioned class tokens, deep text prompts, Q-Former queries"
    published_name = "IQE-CLIP"
    release_selection = (
        "zero-shot: best of about 250 tests on the test set (as MVFA-AD, >=); few-shot: best "
        "of one test per epoch (>=)"
    )
    RELEASED_FILES = {"released": "the release's <Obj>.pth (train_zero.py / train_few.py)"}
    Config = IQEClipConfig
    PRESETS = {"paper": mvfa_config, "smoke": _smoke}
    PROTOCOLS = {"zero_shot": ["model.protocol=zero"], "few_shot": ["model.protocol=few"]}
    needs_masks = False  # classification-only sets (sources) train with the detection loss

    @classmethod
    def ablations(cls, cfg: IQEClipConfig) -> dict[str, list[str]]:
        """One override list per released switch, flipped from the profile's value."""
        other = {"logits_on_probability": "probability", "probability": "logits_on_probability"}
        flips = {
            "use_global": str(not cfg.use_global).lower(),
            "dropout_after_eval": str(not cfg.dropout_after_eval).lower(),
            "det_bce": other[cfg.det_bce],
            "normalize": "clip" if cfg.normalize == "none" else "none",
        }
        out = {f"{k}_{v}": [f"model.{k}={v}"] for k, v in flips.items()}
        out["quick_gelu"] = ["backbone.quick_gelu=true"]
        return out

    def __init__(self, backbone: Backbone, cfg: IQEClipConfig | None = None):
        super().__init__(backbone, cfg)
        cfg = self.cfg
        for key, allowed in (
            ("amp", AMP), ("det_bce", DET_BCE), ("normalize", NORMALIZE), ("protocol", PROTOCOLS)
        ):  # fmt: skip
            if getattr(cfg, key) not in allowed:
                raise ValueError(f"model.{key} must be one of {allowed}, got {getattr(cfg, key)!r}")
        b = backbone
        width, dim = b.text_width, b.embed_dim
        if width != dim:
            raise ValueError(f"IQE-CLIP needs text width == joint width; {b.name}: {width}, {dim}")
        if cfg.deep_prompt_len < 1 or cfg.prompt_len < 1:
            raise ValueError("model.prompt_len and model.deep_prompt_len must be >= 1")
        self.levels = b.levels(cfg.levels)
        n, depth = cfg.deep_prompt_len, b.text_depth
        a = self.adapters
        a["trainable_linearlayer"] = LevelProjections(len(self.levels), b.vision_width, dim)
        a["New_Lan_Embed"] = ClassTokens(cfg.prompt_len, width)
        a["iqm"] = QueryModule(dim, cfg.iqm_layers, cfg.iqm_heads, cfg.iqm_ffn, cfg.iqm_dropout)
        a.register_parameter("query_tokens", nn.Parameter(torch.empty(1, 2, dim)))
        nn.init.trunc_normal_(a.query_tokens)
        a["query_linear"] = GlobalConv(2)
        # text prompts: one shallow + one per later block, all through one projection
        a.register_parameter("prompt_embeddings", nn.Parameter(torch.empty(1, n, width)))
        a.register_parameter(
            "deep_prompt_embeddings", nn.Parameter(torch.empty(depth - 1, n, width))
        )
        nn.init.uniform_(a.prompt_embeddings, -1, 1)
        nn.init.uniform_(a.deep_prompt_embeddings, -1, 1)
        a["prompt_proj"] = nn.Linear(width, width)
        nn.init.kaiming_normal_(a["prompt_proj"].weight, a=0, mode="fan_out")
        a["prompt_norm"] = nn.LayerNorm(width, eps=1e-6)
        # never used by the release's forward pass; kept so its checkpoints load unchanged
        a.register_parameter("prompt_text_projection", nn.Parameter(torch.empty(width, dim)))
        nn.init.normal_(a.prompt_text_projection, std=width**-0.5)
        tokens = b.tokenizer(list(TEMPLATES))
        self.register_buffer("template_tokens", tokens.to(b.device), persistent=False)
        self.eot = tokens.argmax(dim=-1).tolist()  # EOT has the largest id
        self._epoch = 1

    # ---------------------------------------------------------------- description
    def input_spec(self) -> InputSpec:
        size = self.backbone.image_size
        return InputSpec(size, None, None) if self.cfg.normalize == "none" else InputSpec(size)

    def amp(self):
        """fp16 autocast on CUDA (switch `amp`), unless the backbone runs bf16; otherwise the
        backbone's precision."""
        fp16 = self.cfg.amp != "off" and self.precision == "fp32"
        if self.device.type == "cuda" and fp16:
            return torch.autocast("cuda", dtype=torch.float16)
        return self.autocast()

    # ---------------------------------------------------------------- forward
    def encode_text(self, class_tokens: torch.Tensor) -> torch.Tensor:
        """Normal/abnormal text features of each image (B, 2, E), L2-normalised: all 2B
        sequences in one pass of the prompted text tower."""
        clip, a = self.clip, self.adapters
        r, n = class_tokens.shape[1], self.cfg.deep_prompt_len
        emb = clip.token_embedding(self.template_tokens)  # (T, C, W)
        x = splice_class_tokens(emb, self.eot, class_tokens.to(emb.dtype)).flatten(0, 1)
        x = x + clip.positional_embedding  # after the splice: class tokens get positions too
        proj = a["prompt_proj"]
        x = insert_prompt(x, proj(a.prompt_embeddings[0]))  # no positional embedding
        deep = proj(a.deep_prompt_embeddings)  # (depth - 1, n, W)
        for i, block in enumerate(clip.transformer.resblocks):
            if i > 0:
                x = replace_prompt(x, deep[i - 1])
            x = block(x, attn_mask=clip.attn_mask)
        x = clip.ln_final(a["prompt_norm"](strip_prompt(x, n)))
        read = torch.tensor([e + r - 1 for e in self.eot], device=x.device)  # last class token
        read = read.repeat(class_tokens.shape[0])
        feats = x[torch.arange(x.shape[0], device=x.device), read] @ clip.text_projection
        return F.normalize(feats, dim=-1).view(class_tokens.shape[0], len(self.eot), -1)

    def forward_features(self, images: torch.Tensor) -> IQEOutputs:
        """The whole forward pass of a batch (one text pass per image, batched)."""
        a, cfg = self.adapters, self.cfg
        out = self.clip.visual.forward_intermediates(
            images, indices=[lvl - 1 for lvl in self.levels], output_fmt="NLC"
        )
        tokens, g = out["image_intermediates"], out["image_features"]  # pre-ln_post; g unnormalised
        b = images.shape[0]
        class_tokens = a["New_Lan_Embed"](g, cfg.use_global)
        text = self.encode_text(class_tokens)
        queries_in = a.query_tokens.expand(b, -1, -1)
        if cfg.use_global:
            queries_in = queries_in + a["query_linear"](g)
        patch = a["trainable_linearlayer"](tokens)
        k = len(patch)  # the IQM is shared over the levels: one call on k stacked batches
        queries = a["iqm"](
            queries_in.repeat(k, 1, 1), torch.cat(patch), text.repeat(k, 1, 1)
        ).chunk(k)
        scale = a["New_Lan_Embed"].prompt_temp.exp()
        unit = [F.normalize(f, dim=-1) for f in patch]
        new = [
            f @ F.normalize(q, dim=-1).transpose(1, 2) for f, q in zip(unit, queries, strict=True)
        ]
        raw = [(scale * f) @ text.transpose(1, 2) for f in unit]
        return IQEOutputs(g, class_tokens, text, queries_in, patch, list(queries), new, raw)

    # ---------------------------------------------------------------- inference
    def level_mean_maps(self, out: IQEOutputs, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """mean over levels of p(abnormal) after upsampling: raw and new branch (B, S, S)."""
        raw = torch.stack([upsampled_probs(x, size)[:, 1] for x in out.raw_logits]).mean(0)
        new = torch.stack([upsampled_probs(x, size)[:, 1] for x in out.new_logits]).mean(0)
        return raw, new

    def predict(self, images: torch.Tensor, ctx: ClassContext) -> Prediction:
        """Maps: blur(0.2 raw + 0.8 new) per image. Scores: zero-shot rule (sums of the token
        means of both branches over the levels) or few-shot rule (pixel means of the two
        level-mean maps, unblurred), as `protocol` says; both are kept in `extra`."""
        cfg = self.cfg
        with self.amp():
            out = self.forward_features(images)
        raw, new = self.level_mean_maps(out, images.shape[-1])
        blend = cfg.raw_weight * raw + (1 - cfg.raw_weight) * new
        maps = gaussian_blur(blend, cfg.blur_sigma, cfg.blur_truncate)
        tokens = sum(token_score(x) for x in out.new_logits + out.raw_logits)
        pixels = raw.flatten(1).mean(1) + new.flatten(1).mean(1)
        scores = tokens if cfg.protocol == "zero" else pixels
        return Prediction(maps, scores, {"score_tokens": tokens, "score_pixels": pixels})

    def score_rule(
        self, pred: Prediction, ctx: ClassContext, norm=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps and scores as they are (one image) or min-max over the set (`class_scores`;
        no blend follows: AUROC-neutral)."""
        norm = norm or scoring.as_is
        return norm(full_precision(pred.maps)), norm(full_precision(pred.scores))

    # ---------------------------------------------------------------- training
    def grad_scaler(self) -> torch.amp.GradScaler | None:
        if self.device.type == "cuda" and self.cfg.amp == "fp16_scaler":
            return torch.amp.GradScaler("cuda")
        return None  # released: fp16 backward without a scaler

    @classmethod
    def schedule(cls, cfg: IQEClipConfig) -> list[Stage]:
        """One stage; batches hold one class (zero-shot: one source set, as released)."""
        few = cfg.protocol == "few"
        epochs = cfg.epochs if cfg.epochs is not None else (10 if few else 50)
        batch = cfg.batch_size if cfg.batch_size is not None else (32 if few else 128)
        augment = cfg.augment if cfg.augment is not None else ("mvfa_x11" if few else "none")
        return [
            Stage(
                "iqe", epochs, batch, cfg.lr, cfg.betas, augment=augment, one_class_per_batch=True
            )
        ]

    def param_groups(self, stage: Stage) -> list[dict]:
        """One Adam: everything at the stage lr, the temperature in its own group."""
        a = self.adapters
        temp = a["New_Lan_Embed"].prompt_temp
        unused = {id(a.prompt_text_projection)}  # never in the forward pass (kept for loading)
        if not self.cfg.use_global:  # the g-conditioning convolutions get no gradient then
            convs = (a["New_Lan_Embed"].prompt_linear1, a["query_linear"])
            unused |= {id(p) for m in convs for p in m.parameters()}
        rest = [p for p in a.parameters() if p is not temp and id(p) not in unused]
        return [{"params": rest}, {"params": [temp], "lr": self.cfg.temperature_lr}]

    def start_epoch(self, stage: Stage, epoch: int) -> None:
        self._epoch = epoch
        self._set_dropout()

    def train(self, mode: bool = True) -> IQEClip:
        super().train(mode)
        self._set_dropout()
        return self

    def _set_dropout(self) -> None:
        """The release's IQM dropout is on only until its first test, which switches it off
        for good: never in zero-shot (tested before the first step), epoch 1 in few-shot."""
        cfg = self.cfg
        on = self.training and (
            cfg.dropout_after_eval or (cfg.protocol == "few" and self._epoch <= 1)
        )
        for m in self.adapters.modules():
            if isinstance(m, nn.Dropout):
                m.train(on)

    def segmentation_rows(self, batch: dict) -> torch.Tensor:
        """(B,) bool: images that get the segmentation loss (their set has masks)."""
        labels = batch["label"]
        keep = [c not in self.cfg.classification_only for c in batch["class_name"]]
        rows = torch.tensor(keep, dtype=torch.bool, device=labels.device)
        if "has_mask" in batch:
            has_mask = torch.as_tensor(batch["has_mask"], dtype=torch.bool, device=labels.device)
            rows &= (labels != 1) | has_mask
        return rows

    def loss(self, stage: Stage, batch: dict) -> dict[str, torch.Tensor]:
        """Detection (both branches, every level) + focal and abnormal-channel dice of the
        upsampled maps of both branches on images of segmentation sets (normals included)."""
        images, labels = batch["image"], batch["label"].to(batch["image"].dtype)
        with self.amp():
            out = self.forward_features(images)
        bce = (
            F.binary_cross_entropy_with_logits
            if self.cfg.det_bce == "logits_on_probability"
            else F.binary_cross_entropy
        )
        branches = {"new": out.new_logits, "raw": out.raw_logits}
        det = sum(bce(token_score(x), labels) for b in branches.values() for x in b)
        terms = {"detection": det}
        rows = self.segmentation_rows(batch)
        masks = (batch["mask"][rows] > 0.5).float()
        size = images.shape[-1]
        for name, branch in branches.items():
            total = images.new_zeros(())
            if rows.any():
                for logits in branch:
                    p = upsampled_probs(logits[rows], size)
                    total = total + losses.focal_loss(p, masks) + losses.dice_loss(p[:, 1], masks)
            terms[f"segmentation_{name}"] = total
        return terms

    def import_released(self, path: str | Path) -> None:
        """`aaclip import-released --method iqeclip --released <Obj>.pth`."""
        load_released(self, path)


def load_released(method: IQEClip, path: str | Path) -> None:
    """Load a release-format checkpoint (`train_zero.py`/`train_few.py`: `{trainable_linearlayer,
    New_Lan_Embed, iqm, query_linear: state dicts; query_tokens, prompt*: tensors}`); the
    nested names joined with "." are this method's own, strictly checked."""
    from aaclip.checkpoints import CheckpointMismatchError

    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "iqm" not in blob:
        raise CheckpointMismatchError(f"{path}: no 'iqm' entry; is this an IQE-CLIP file?")
    flat: dict[str, torch.Tensor] = {}
    for key, value in blob.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value.detach()
    try:
        method.load_adapter_state(flat, str(path))
    except ValueError as err:
        raise CheckpointMismatchError(str(err)) from None
