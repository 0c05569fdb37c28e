"""Atomic file writes: a temporary file in the same folder, then `os.replace`.

Readers never see a half-written file, and a crash leaves the previous version in place.
The file gets the permissions of an ordinary `open(path, "w")`: 0o666 less the user's umask.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """A new, exclusive temporary file next to the target, created with mode 0o666.

    `tempfile.mkstemp` creates 0o600 files; `os.open(..., 0o666)` lets the kernel apply the
    umask, so the final file has exactly the permissions the user's umask asks for (no
    process-wide `os.umask` query, which is not thread-safe).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: could not create a temporary file for {name}")


def atomic_write(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Write `data` to `path` atomically (creating parent folders).

    `durable=False` skips the fsync: still atomic, but a power cut may lose the new file
    (fine for files that are cheap to regenerate).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic_write(path, text.encode("utf-8"))


# The one list of image suffixes: folders and named files in `predict`/`calibrate`, the
# dataset converters (data_prep); every one of them Pillow reads.
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


class OutputFolderError(ValueError):
    """An output folder that cannot be written; the message is one line naming it."""


def check_writable(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Refuse, before anything runs, an output `folder` that cannot be created or written
    (read-only, not ours, or a file in the way): one line naming it. Nothing is created."""
    folder = Path(folder).expanduser()
    probe = folder.absolute()
    while not probe.exists() and probe.parent != probe:
        if probe.is_symlink():  # a dangling link: its target cannot be made here
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputFolderError(
            f"{what} {folder}: cannot write there, {probe} is a file, not a folder"
        )
    if not probe.exists() or not os.access(probe, os.W_OK | os.X_OK):
        raise OutputFolderError(
            f"{what} {folder}: cannot write there ({probe} is not writable); choose another"
        )
    return folder


def write_error(err: OSError) -> str | None:
    """One line for an OSError of the file system (permission, read-only file system, full
    disk, a file where a folder should be), naming the path; None for other errors."""
    import errno

    codes = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.ENOTDIR, errno.EISDIR,
             errno.EDQUOT}  # fmt: skip
    if err.errno not in codes:
        return None
    if err.filename is None:
        return " ".join(str(err).split())
    return f"{err.filename}: {err.strerror or err}"
