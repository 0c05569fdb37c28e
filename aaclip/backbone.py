"""Frozen CLIP backbones on open_clip: loading, tokens per level, V-V attention surgery.

Weights are never downloaded: `create_backbone` builds the architecture from open_clip's
config registry (plus the tiny test configs in `aaclip/model_configs/`) and loads a local file
when one is given, otherwise it keeps the random initialisation. It returns a `Backbone`: the
frozen CLIP, its tokenizer and its identity (what checkpoints must match).
"""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from aaclip.runtime import apply_thread_policy, default_dtype, parameter_dtype

WEIGHTS_ENV = "AACLIP_WEIGHTS"
TINY_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(TINY_CONFIG_DIR)

# The OpenAI TorchScript archive ("ViT-L-14-336.pt") is the one file that cannot be read with
# weights_only=True; it is the documented exception and goes through torch.jit.load.


class WeightsNotFoundError(FileNotFoundError):
    """A weights file was asked for and is not there; the message says how to provide it."""


class WeightsFileError(ValueError):
    """A weights file is not CLIP weights, or not weights of this architecture (one line)."""


class WeightsIgnoredWarning(UserWarning):
    """$AACLIP_WEIGHTS was set but does not apply to the backbone being built."""


def tiny_model_names() -> list[str]:
    """Names of the registered tiny configs used by tests and the smoke profile."""
    return sorted(p.stem for p in TINY_CONFIG_DIR.glob("*.json"))


def resolve_weights(
    weights: str | os.PathLike | None, model_name: str, required: bool = False
) -> Path | None:
    """Path of the weights file to load (argument, else $AACLIP_WEIGHTS), or None for random.

    $AACLIP_WEIGHTS names the weights of the real backbone; the tiny smoke configs
    (`aaclip-tiny*`) are random by design, so it is ignored for them (with a warning saying
    so). An explicit `weights` file is always used, and refused by `create_backbone` if it does
    not fit. With `required=True` (the paper profile) a missing file is an error, never
    random init.
    """
    if weights in (None, "", "random"):
        weights = os.environ.get(WEIGHTS_ENV) or None
        if weights is not None and model_name in tiny_model_names():
            warnings.warn(
                f"{WEIGHTS_ENV} ignored for {model_name}: the tiny smoke backbones are random "
                "by design (pass --weights to load a file into one)",
                WeightsIgnoredWarning,
                stacklevel=2,
            )
            weights = None
        if weights is None and required:
            weights = f"{model_name}.pt"  # the name the error message points the user to
        elif weights is None:
            return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"weights for {model_name} not found: expected a file at {path} "
            f"(OpenAI TorchScript .pt, open_clip .bin/.pth or .safetensors); pass --weights PATH "
            f"or set {WEIGHTS_ENV}=PATH"
        )
    return path


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a CLIP state dict from safetensors, a pickled state dict or an OpenAI TorchScript."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    elif _is_torchscript(path):
        # OpenAI's released .pt files are TorchScript archives (see module note).
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    for key in ("input_resolution", "context_length", "vocab_size"):
        state.pop(key, None)
    return state


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip holding a `code/` folder."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in name or name.startswith("code/") for name in z.namelist())


@dataclass(eq=False)
class Backbone:
    """A frozen open_clip CLIP with its tokenizer and identity (what checkpoints must match)."""

    clip: nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    identity: dict[str, object]

    @property
    def name(self) -> str:
        return str(self.identity["name"])

    @property
    def image_size(self) -> int:
        return int(self.identity["image_size"])

    @property
    def vision_depth(self) -> int:
        return len(self.clip.visual.transformer.resblocks)

    @property
    def text_depth(self) -> int:
        return len(self.clip.transformer.resblocks)

    @property
    def vision_width(self) -> int:
        return int(self.clip.visual.conv1.out_channels)

    @property
    def text_width(self) -> int:
        return int(self.clip.token_embedding.embedding_dim)

    @property
    def embed_dim(self) -> int:
        return int(self.clip.text_projection.shape[1])

    @property
    def device(self) -> torch.device:
        return self.clip.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """float64 under the fp64 precision, else float32."""
        return self.clip.token_embedding.weight.dtype

    def levels(self, levels: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """The given 1-based levels, else 1/4, 1/2, 3/4 and all of the vision depth."""
        return tuple(levels or default_levels(self.vision_depth))


def create_backbone(
    name: str = "ViT-L-14-336",
    weights: str | os.PathLike | None = None,
    image_size: int | None = None,
    quick_gelu: bool = False,
    device: str | torch.device = "cpu",
    init_seed: int = 0,
    require_weights: bool = False,
    precision: str = "fp32",
) -> Backbone:
    """Build an open_clip CLIP, load local weights if given, freeze it and put it in eval mode.

    `image_size` overrides the config's input size; loaded positional embeddings are resized
    (bicubic) by open_clip. `quick_gelu` defaults to False like the released AA-CLIP code.
    Without weights the random initialisation is drawn from `init_seed` alone, so the same
    random backbone is rebuilt in every process (training, evaluation, prediction); it is
    drawn in float64 (the same on every CPU) and cast. Weights are float64 under
    `precision="fp64"`, float32 otherwise: bf16 comes from autocast on GPU.
    """
    if name not in open_clip.list_models():
        raise ValueError(f"unknown backbone {name!r}; tiny test configs: {tiny_model_names()}")
    dtype = parameter_dtype(precision)
    path = resolve_weights(weights, name, require_weights)
    # A random init is drawn in float64 whatever the precision (then cast): the same weights
    # on every CPU and under every precision, so a checkpoint fits its random backbone.
    build = torch.float64 if path is None else dtype
    with _quiet("root"), torch.random.fork_rng(devices=[]), default_dtype(build):
        torch.manual_seed(init_seed)  # open_clip warns "initialized randomly": silenced
        model = open_clip.create_model(
            name, pretrained=None, force_image_size=image_size, force_quick_gelu=quick_gelu
        )
    digest = None
    if path is not None:
        source = f" (from ${WEIGHTS_ENV})" if weights in (None, "", "random") else ""
        state = _read_weights(path, name, source)
        check_fits(state, model, f"{path}{source}", name)
        digest = weights_digest(path, state)
        open_clip.model.resize_pos_embed(state, model)
        model.load_state_dict(state, strict=True)
    model.requires_grad_(False).eval()
    # Images of any float dtype are accepted: the patch embedding casts them to the weights'.
    model.visual.conv1.register_forward_pre_hook(_cast_to_weights)
    identity = backbone_identity(model, name, path, quick_gelu, init_seed, digest)
    return Backbone(model.to(device=device, dtype=dtype), get_tokenizer(name), identity)


def _cast_to_weights(conv: nn.Module, args: tuple) -> tuple:
    return (args[0].to(conv.weight.dtype), *args[1:])


def build_backbone(cfg, device: str | torch.device = "cpu") -> Backbone:
    """The frozen backbone of a `BackboneConfig` (threads set by the thread policy when an
    entry point switched it on: `runtime.use_thread_policy`)."""
    apply_thread_policy(cfg.name in tiny_model_names(), device)
    return create_backbone(
        cfg.name, cfg.weights, cfg.image_size, cfg.quick_gelu, device,
        require_weights=cfg.require_weights, precision=cfg.precision,
    )  # fmt: skip


def _read_weights(path: Path, name: str, source: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a weights file; one line naming the file when it is not CLIP weights."""
    try:
        state = load_state_dict(path)
        ok = bool(state) and all(isinstance(v, torch.Tensor) for v in state.values())
        ok = ok and any(k.startswith("visual.") for k in state)
    except Exception:  # unreadable of any kind (pickle, safetensors, zip): described below
        ok = False
    if not ok:
        from aaclip.checkpoints import describe_file

        raise WeightsFileError(
            f"{path}{source}: does not fit {name}: it is {describe_file(path)} (CLIP weights "
            "are an OpenAI TorchScript .pt, an open_clip .bin/.pth or a .safetensors)"
        )
    return state


def check_fits(state: dict[str, torch.Tensor], model: nn.Module, where: str, name: str) -> None:
    """Raise one line naming the first tensor whose shape does not fit `model`, both shapes.

    Called before `load_state_dict`, whose size-mismatch error lists every tensor over
    hundreds of lines. Missing and unexpected tensor names are counted in the same line. The
    vision positional embedding may differ in length (open_clip resizes it to the image
    size), not in width.
    """
    own = model.state_dict()
    problems = []
    for key, mine in own.items():
        theirs = state.get(key)
        if theirs is None:
            continue
        if key == "visual.positional_embedding":
            same = theirs.ndim == mine.ndim and theirs.shape[-1] == mine.shape[-1]
        else:
            same = theirs.shape == mine.shape
        if not same:
            problems.append(
                f"first mismatching tensor {key} is {tuple(theirs.shape)} in the file, "
                f"{tuple(mine.shape)} in {name}"
            )
            break
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing:
        problems.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if problems:
        raise WeightsFileError(
            f"{where}: does not fit {name} (weights of another architecture?): "
            + "; ".join(problems)
        )


def weights_digest(path: Path, state: dict[str, torch.Tensor]) -> str:
    """The content hash identifying a weights file, computed once per file (cached).

    Identity is the hash of the loaded tensors (names, shapes, float32 values), not of the
    file's bytes: converting a .pt to .safetensors, fp16 to fp32 or renaming the file keeps
    the values the model is built from, so its checkpoints stay valid, while any other
    weights, under whatever name, are refused. The cache (keyed by path, size and mtime)
    spares the ~1 s of hashing a ViT-L on every later load.
    """
    from aaclip.digests import cached_digest, state_sha256

    return cached_digest(path, "clip-state-sha256-v1", lambda: state_sha256(state))


@contextmanager
def _quiet(logger: str):
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def backbone_identity(
    model: nn.Module,
    name: str,
    weights: Path | None,
    quick_gelu: bool,
    init_seed: int = 0,
    digest: str | None = None,
) -> dict[str, object]:
    """What a checkpoint must match: architecture, input size and the weights it was trained on.

    `weights_sha256` (see `weights_digest`) identifies the weights; `weights` (the file name)
    is kept for people reading the metadata and for checkpoints made before the hash.
    """
    visual = model.visual
    return {
        "name": name,
        "image_size": int(visual.image_size[0]),
        "vision_width": int(visual.conv1.out_channels),
        "vision_layers": len(visual.transformer.resblocks),
        "text_width": int(model.token_embedding.embedding_dim),
        "embed_dim": int(model.text_projection.shape[1]),
        "quick_gelu": bool(quick_gelu),
        "weights": weights.name if weights is not None else f"random-init-seed{init_seed}",
        "weights_sha256": digest,
    }


def get_tokenizer(name: str):
    """open_clip's BPE tokenizer (bundled vocabulary, no download)."""
    return open_clip.get_tokenizer(name)


def default_levels(depth: int) -> tuple[int, ...]:
    """Block indices (1-based) after which patch tokens are kept: 1/4, 1/2, 3/4 and all of depth."""
    return tuple(max(1, round(depth * k / 4)) for k in range(1, 5))


def scaled_count(reference: int, reference_depth: int, depth: int) -> int:
    """Scale a block count given for the paper backbone (e.g. 6 of 24) to another depth."""
    return max(1, round(reference * depth / reference_depth))


def patch_levels(model: nn.Module, images: torch.Tensor, levels: tuple[int, ...]) -> list:
    """Patch tokens (B, L, D) after each 1-based block in `levels`, via open_clip's own API."""
    out = model.visual.forward_intermediates(
        images, indices=[lvl - 1 for lvl in levels], output_fmt="NLC", intermediates_only=True
    )
    return out["image_intermediates"]


def embed_patches(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Stem of the ViT: patches + CLS + positional embedding + ln_pre, as (B, 1+L, D)."""
    return visual._embeds(images)


def vv_attention(
    attn: nn.MultiheadAttention, x: torch.Tensor, axis: str = "tokens"
) -> torch.Tensor:
    """Value-value self-attention with the block's own value and output projections.

    `axis="tokens"` attends across the tokens of each image (the intended surgery);
    `axis="batch"` reproduces the released AA-CLIP code, which ran a batch-first attention on
    sequence-first tensors and therefore attends across the images of the batch at each token.
    """
    if axis not in ("tokens", "batch"):
        raise ValueError(f"vv_attention_axis must be 'tokens' or 'batch', got {axis!r}")
    if axis == "batch":
        x = x.transpose(0, 1)
    n, s, c = x.shape
    heads = attn.num_heads
    bias = attn.in_proj_bias[2 * c :] if attn.in_proj_bias is not None else None
    v = F.linear(x, attn.in_proj_weight[2 * c :], bias)
    v = v.reshape(n, s, heads, c // heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(v, v, v)
    out = attn.out_proj(out.transpose(1, 2).reshape(n, s, c))
    return out.transpose(0, 1) if axis == "batch" else out


def surgery_block(block: nn.Module, x: torch.Tensor, axis: str) -> torch.Tensor:
    """An open_clip ResidualAttentionBlock with its attention replaced by V-V attention."""
    x = x + block.ls_1(vv_attention(block.attn, block.ln_1(x), axis))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


@torch.no_grad()
def surgery_features(
    model: nn.Module,
    images: torch.Tensor,
    levels: tuple[int, ...],
    surgery_blocks: int,
    axis: str = "batch",
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Stage-1 visual features: V-V-attention patch tokens per level and the CLIP image embedding.

    The last `surgery_blocks` blocks run with V-V attention. The blocks before them are shared
    by the original and the surgery path, so they run once. Returns (per-level L2-normalised
    patch embeddings (B, L, E), L2-normalised image embedding (B, E)).
    """
    visual = model.visual
    blocks = visual.transformer.resblocks
    depth = len(blocks)
    first_surgery = depth - surgery_blocks
    x = embed_patches(visual, images)
    kept: dict[int, torch.Tensor] = {}
    for i in range(first_surgery):
        x = blocks[i](x)
        if i + 1 in levels:
            kept[i + 1] = x
    original, surgery = x, x
    for i in range(first_surgery, depth):
        original = blocks[i](original)
        surgery = surgery_block(blocks[i], surgery, axis)
        if i + 1 in levels:
            kept[i + 1] = surgery
    image_embedding = F.normalize(visual.ln_post(original[:, 0]) @ visual.proj, dim=-1)
    patches = [
        F.normalize(visual.ln_post(kept[lvl][:, 1:]) @ visual.proj, dim=-1) for lvl in levels
    ]
    return patches, image_embedding
