"""Content hashes of weights files, computed once per file and cached.

The cache is a small JSON file, `$AACLIP_CACHE/digests.json` (default `~/.cache/aaclip`),
keyed by (kind of hash, resolved path) and valid while the file's size and modification
time are unchanged. A cache that cannot be read or written is ignored: hashing again is
slow, never wrong.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from aaclip.fileio import atomic_write_text

CACHE_ENV = "AACLIP_CACHE"
CACHE_FILE = "digests.json"
_CHUNK = 1 << 22


def cache_dir() -> Path:
    """`$AACLIP_CACHE`, else `~/.cache/aaclip`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "aaclip"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's content: sorted names, shapes and float32 values.

    Floating tensors are hashed as the float32 values a model built in fp32 receives from
    `load_state_dict`, so an fp16 file and its fp32 conversion (same values), or a `.pt`
    and its `.safetensors` copy, hash alike; any changed value changes the hash.
    """
    digest = hashlib.sha256(b"aaclip-state-sha256-v1\n")
    for key in sorted(state):
        t = state[key].detach().to("cpu")
        t = t.float() if t.is_floating_point() else t.to(torch.int64)
        digest.update(f"{key}\0{tuple(t.shape)}\0".encode())
        digest.update(np.ascontiguousarray(t.numpy()).reshape(-1).view(np.uint8))
    return digest.hexdigest()


def _load_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def cached_digest(path: str | os.PathLike, kind: str, compute: Callable[[], str]) -> str:
    """The digest of `path` of this `kind`, from the cache if the file is unchanged."""
    resolved = Path(path).resolve()
    st = resolved.stat()
    key = f"{kind}:{resolved}"
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    cache_file = cache_dir() / CACHE_FILE
    entry = _load_cache(cache_file).get(key)
    if isinstance(entry, dict) and {k: entry.get(k) for k in stamp} == stamp and "sha256" in entry:
        return str(entry["sha256"])
    value = compute()
    cache = _load_cache(cache_file)  # re-read: another process may have added entries
    cache[key] = {**stamp, "sha256": value}
    with contextlib.suppress(OSError):  # read-only home: hash again next time
        atomic_write_text(cache_file, json.dumps(cache, indent=1, sort_keys=True))
    return value
