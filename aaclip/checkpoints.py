"""Adapter checkpoints: safetensors written atomically, with config and backbone identity.

Only the trainable adapters are stored, never the frozen backbone. Loading refuses a
checkpoint whose backbone identity (architecture, image size, weights) differs.
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
    """Save adapter tensors and a JSON-serialisable `meta` (config, identity, stage, epoch)."""
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    atomic_write(path, save(tensors, metadata={"aaclip": json.dumps(meta, sort_keys=True)}))


def read_meta(path: str | Path) -> dict:
    """The metadata of a checkpoint without loading its tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("aaclip", "{}"))


def load_adapters(path: str | Path, identity: dict | None = None) -> tuple[dict, dict]:
    """Tensors and metadata of a checkpoint; refuses one made for another backbone."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    meta = read_meta(path)
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


def load_released(model, text_path: str | Path | None, image_path: str | Path | None) -> None:
    """Import the authors' `text_adapter.pth` / `image_adapter[_N].pth` into an AAClip model."""
    for path, key, module in (
        (text_path, "text_adapter", model.text_adapter),
        (image_path, "image_adapter", model.image_adapter),
    ):
        if path is None:
            continue
        blob = torch.load(path, map_location="cpu", weights_only=True)
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
