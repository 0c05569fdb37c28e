"""Adapter checkpoints: safetensors written atomically, with config and backbone identity.

Only a method's trainable state is stored (dtypes kept), never the frozen backbone. Loading
refuses a checkpoint of another method, or one whose backbone identity (architecture, image
size, weights) differs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from aaclip.fileio import atomic_write

IDENTITY_KEYS = ("name", "image_size", "vision_width", "vision_layers", "text_width", "embed_dim")


class CheckpointMismatchError(ValueError):
    """A checkpoint was made for another backbone, image size or method configuration."""


def atomic_torch_save(obj, path: str | Path) -> None:
    """torch.save through a temporary file (for optimizer state, read with weights_only)."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def save_adapters(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Save adapter tensors and a JSON-serialisable `meta` (method, config, identity, stage)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, save(tensors, metadata={"aaclip": json.dumps(meta, sort_keys=True)}))


def read_meta(path: str | Path) -> dict:
    """The metadata of a checkpoint without loading its tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("aaclip", "{}"))


def load_adapters(
    path: str | Path, identity: dict | None = None, method: str | None = None
) -> tuple[dict, dict]:
    """Tensors and metadata of a checkpoint; refuses one of another method or backbone."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    meta = read_meta(path)
    saved_method = meta.get("method", "aaclip")
    if method is not None and saved_method != method:
        raise CheckpointMismatchError(
            f"{path}: a {saved_method} checkpoint, not {method}; use --method {saved_method}"
        )
    if identity is not None:
        check_identity(meta.get("backbone", {}), identity, path)
    return load_file(str(path)), meta


def check_identity(saved: dict, current: dict, path: str | Path) -> None:
    """Raise naming every field where the checkpoint's backbone differs from the current one."""
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs model {current.get(k)!r}"
        for k in (*IDENTITY_KEYS, "weights")
        if k in saved and saved.get(k) != current.get(k)
    ]
    if diffs:
        raise CheckpointMismatchError(f"{path}: made for another backbone ({'; '.join(diffs)})")
