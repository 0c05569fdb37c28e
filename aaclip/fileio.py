"""Atomic file writes: a temporary file in the same folder, then `os.replace`.

Readers never see a half-written file, and a crash leaves the previous version in place.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Write `data` to `path` atomically (creating parent folders).

    `durable=False` skips the fsync: still atomic, but a power cut may lose the new file
    (fine for files that are cheap to regenerate).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic_write(path, text.encode("utf-8"))
