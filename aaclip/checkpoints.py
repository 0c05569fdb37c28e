"""Adapter checkpoints: safetensors written atomically, with config and backbone identity.

Only a method's trainable state is stored (dtypes kept), never the frozen backbone. Loading
refuses a checkpoint of another method, or one whose backbone identity (architecture, image
size, weights) differs, and a file that is not a checkpoint at all (`describe_file` says in
a few words what it is instead).
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from aaclip.fileio import atomic_write

IDENTITY_KEYS = ("name", "image_size", "vision_width", "vision_layers", "text_width", "embed_dim")


class CheckpointMismatchError(ValueError):
    """A checkpoint was made for another backbone, image size or method configuration."""


class NotACheckpointError(CheckpointMismatchError):
    """A file given as a checkpoint is something else (weights, released .pth, resume.pt)."""


_IMPORT_HINT = (
    "checkpoints are the .safetensors files `aaclip train` writes, or that "
    "`aaclip import-released --text text_adapter.pth --image image_adapter_N.pth --out "
    "model.safetensors` makes from the authors' files"
)


def atomic_torch_save(obj, path: str | Path) -> None:
    """torch.save through a temporary file (for optimizer state, read with weights_only)."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def save_adapters(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Save adapter tensors and a JSON-serialisable `meta` (method, config, identity, stage).

    A few-shot config (`aaclip.reference.uses_memory`) also stores its reference normals'
    records with their SHA-256 (`meta["reference"]`), so that every exit scores the
    checkpoint with the memory bank it was evaluated with (omitted when they cannot be read).
    """
    if isinstance(meta.get("config"), dict) and "reference" not in meta:
        meta = {**meta, **_reference_meta(meta["config"])}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, save(tensors, metadata={"aaclip": json.dumps(meta, sort_keys=True)}))


def _reference_meta(config: dict) -> dict:
    from aaclip import reference
    from aaclip.config import ExperimentConfig

    try:
        described = reference.describe(ExperimentConfig.from_dict(config))
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {reference.META_KEY: described} if described else {}


def _safetensors_header(path: Path) -> tuple[dict, list[str]] | None:
    """(metadata, tensor names) of a safetensors file, None if it is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {}), list(f.keys())
    except Exception:  # SafetensorError, OSError: not a (readable) safetensors file
        return None


def _aaclip_meta(header: tuple[dict, list[str]] | None) -> dict | None:
    if header is None or "aaclip" not in header[0]:
        return None
    try:
        meta = json.loads(header[0]["aaclip"])
    except ValueError:
        return None
    return meta if isinstance(meta, dict) and ("config" in meta or "backbone" in meta) else None


def _describe_keys(keys: list[str], container: str) -> str:
    if any(k.startswith("visual.") for k in keys) and any(
        k.startswith(("transformer.", "token_embedding.")) for k in keys
    ):
        return f"CLIP backbone weights ({container}, {len(keys)} tensors)"
    shown = ", ".join(repr(k) for k in sorted(keys)[:3]) or "none"
    many = "s" * (len(keys) != 1)
    return f"{container} of {len(keys)} tensor{many} (e.g. {shown}), not CLIP weights"


def _describe_object(obj: object) -> str:
    if not isinstance(obj, dict):
        return f"a PyTorch file holding a {type(obj).__name__}, not weights"
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return _describe_object(obj["state_dict"])
    epoch = f", epoch {obj['epoch']}" if "epoch" in obj else ""
    if "image_adapter" in obj:
        return f"the authors' released AA-CLIP image adapter (image_adapter_N.pth{epoch})"
    if "text_adapter" in obj:
        return f"the authors' released AA-CLIP text adapter (text_adapter.pth{epoch})"
    if {"stage", "epoch", "optimizer"} <= set(obj):
        return (
            f"a run's training state (resume.pt of stage {obj['stage']}{epoch}: optimizer "
            "state, no weights)"
        )
    keys = [str(k) for k in obj]
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return _describe_keys(keys, "a PyTorch state dict")
    return f"a PyTorch file with entries {', '.join(repr(k) for k in keys[:4])}, not weights"


def describe_file(path: str | Path) -> str:
    """What a file is, in a few words: checkpoint, CLIP weights, released .pth, resume.pt ...

    Used to say what was given when a file of another kind was expected.
    """
    path = Path(path)
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "a folder, not a file"
    if path.stat().st_size == 0:
        return "an empty file"
    header = _safetensors_header(path)
    meta = _aaclip_meta(header)
    if meta is not None:
        epoch = meta.get("epoch")
        when = f"stage {meta.get('stage')}" + (f", epoch {epoch}" if epoch is not None else "")
        origin = ", imported from the released files" if meta.get("imported_from") else ""
        bb = meta.get("backbone", {})
        return (
            f"an aaclip checkpoint ({meta.get('method', 'aaclip')}, {when}{origin}; backbone "
            f"{bb.get('name')} at {bb.get('image_size')} px)"
        )
    if header is not None:
        return _describe_keys(header[1], "a safetensors file")
    if path.suffix == ".safetensors":
        return "not a safetensors file (its header cannot be read), not weights"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any("/code/" in n or n.startswith("code/") for n in z.namelist()):
                return "a TorchScript archive (OpenAI's CLIP weights format)"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception:  # unpickling errors of every kind: not a PyTorch file we can read
        with open(path, "rb") as f:
            head = f.read(4096)
        try:
            kind = "a binary file" if b"\0" in head else "a text file"
            head.decode("utf-8")
        except UnicodeDecodeError:
            kind = "a binary file"
        return f"{kind}, not weights (neither safetensors nor a PyTorch file)"
    return _describe_object(obj)


def check_is_checkpoint(path: str | Path) -> dict:
    """The aaclip metadata of a checkpoint; a one-line error saying what the file is otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    meta = _aaclip_meta(_safetensors_header(path))
    if meta is not None:
        return meta
    what = describe_file(path)
    if what.startswith("CLIP backbone") or what.startswith("a TorchScript"):
        hint = "backbone weights go to --weights; " + _IMPORT_HINT
    else:
        hint = _IMPORT_HINT
    raise NotACheckpointError(f"{path}: {what}, not an aaclip checkpoint; {hint}")


def read_meta(path: str | Path) -> dict:
    """The metadata of a checkpoint without loading its tensors (refuses other files)."""
    return check_is_checkpoint(path)


def load_adapters(
    path: str | Path, identity: dict | None = None, method: str | None = None
) -> tuple[dict, dict]:
    """Tensors and metadata of a checkpoint; refuses one of another method or backbone."""
    path = Path(path)
    meta = check_is_checkpoint(path)
    saved_method = meta.get("method", "aaclip")
    if method is not None and saved_method != method:
        raise CheckpointMismatchError(
            f"{path}: a {saved_method} checkpoint, not {method}; use --method {saved_method}"
        )
    if identity is not None:
        check_identity(meta.get("backbone", {}), identity, path)
    return load_file(str(path)), meta


def _short(digest: object) -> str:
    return f"sha256 {str(digest)[:12]}" if digest else "no hash"


def check_identity(saved: dict, current: dict, path: str | Path) -> None:
    """Raise naming every field where the checkpoint's backbone differs from the current one.

    The weights are compared by content (`weights_sha256`, see backbone.weights_digest), so
    a renamed or converted weights file keeps its checkpoints valid and other weights under
    the same file name are refused. Checkpoints written before content hashes only carry the
    file name: then the names are compared, with a warning saying so.
    """
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs model {current.get(k)!r}"
        for k in IDENTITY_KEYS
        if k in saved and saved.get(k) != current.get(k)
    ]
    if "weights_sha256" in saved:
        if saved["weights_sha256"] != current.get("weights_sha256") or (
            not saved["weights_sha256"] and saved.get("weights") != current.get("weights")
        ):
            diffs.append(
                f"weights: checkpoint {saved.get('weights')!r} ({_short(saved['weights_sha256'])})"
                f" vs model {current.get('weights')!r} ({_short(current.get('weights_sha256'))})"
            )
    elif "weights" in saved:
        if saved["weights"] != current.get("weights"):
            diffs.append(
                f"weights: checkpoint {saved['weights']!r} vs model {current.get('weights')!r}"
            )
        elif current.get("weights_sha256"):
            warnings.warn(
                f"{path}: made before weights were identified by content; matched the backbone "
                f"weights by file name ({saved['weights']}) only",
                stacklevel=2,
            )
    if diffs:
        raise CheckpointMismatchError(f"{path}: made for another backbone ({'; '.join(diffs)})")
