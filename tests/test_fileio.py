"""Atomic writes: whole files only, and the user's umask decides the permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from aaclip.fileio import atomic_write, atomic_write_text


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=oct)
def test_atomic_write_follows_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.bin", b"x")
        atomic_write_text(tmp_path / "sub" / "b.txt", "y")
        with open(tmp_path / "plain.txt", "w") as f:  # what an ordinary write gives
            f.write("z")
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    for name in ("a.bin", "sub/b.txt", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    atomic_write_text(target, "old")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]
