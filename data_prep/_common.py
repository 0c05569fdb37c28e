"""Shared helpers for the raw-layout converters: errors, file listing, records, CLI.

Every converter turns one raw dataset tree into records of the released AA-CLIP format,
one JSON object per line::

    {"image_path": str, "label": 0 | 1, "class_name": str, "mask_path": str}

Paths are POSIX paths relative to the dataset root. ``mask_path`` is present only on
anomalous records that have a pixel mask (normal records never carry the key, as in the
released lists).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from aaclip.fileio import IMAGE_SUFFIXES, atomic_write_text

IMAGE_EXTENSIONS = IMAGE_SUFFIXES  # aaclip's one list (predict reads the same)
"""Recognised image suffixes, matched case-insensitively."""

MAX_LISTED = 10
"""How many missing files an error message names before it says ``(+N more)``."""

Record = dict[str, object]


class LayoutError(Exception):
    """A raw tree does not match the layout a converter expects.

    The message is one line: ``<dataset> at <root>: expected <...>, found <...>``.
    """

    def __init__(self, dataset: str, root: Path | str, expected: str, found: str) -> None:
        self.dataset = dataset
        self.root = Path(root)
        self.expected = expected
        self.found = found
        message = f"{dataset} at {root}: expected {expected}, found {found}"
        super().__init__(message.replace("\r", " ").replace("\n", " "))


def is_image(path: Path) -> bool:
    """True for a visible file whose suffix is an image extension (any case)."""
    return (
        path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()
    )


def list_images(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name ([] if it is absent)."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if is_image(p)), key=lambda p: p.name)


def list_dirs(folder: Path) -> list[Path]:
    """The visible sub-folders of ``folder``, sorted by name ([] if it is absent)."""
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def stem_index(folder: Path) -> dict[str, list[Path]]:
    """Map each image stem in ``folder`` to its files, ``.png`` first, then by name."""
    index: dict[str, list[Path]] = {}
    for path in list_images(folder):
        index.setdefault(path.stem, []).append(path)
    for paths in index.values():
        paths.sort(key=lambda p: (p.suffix.lower() != ".png", p.name))
    return index


def find_mask(index: dict[str, list[Path]], image: Path, suffix: str = "") -> Path | None:
    """The mask for ``image`` in a :func:`stem_index`: same name first, else same stem.

    ``suffix`` is appended to the image stem (``"_mask"`` for MVTec-style trees).
    """
    candidates = index.get(image.stem + suffix, [])
    if not suffix:
        for path in candidates:
            if path.name == image.name:
                return path
    return candidates[0] if candidates else None


def rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as a POSIX string."""
    return path.relative_to(root).as_posix()


def make_record(
    image_path: str, label: int, class_name: str, mask_path: str | None = None
) -> Record:
    """One record; ``mask_path`` only when given (normal records never carry it)."""
    record: Record = {"image_path": image_path, "label": int(label), "class_name": class_name}
    if mask_path:
        record["mask_path"] = mask_path
    return record


def record_key(record: Record) -> tuple[str, str, int, str]:
    """Deterministic sort key: class, image path, label, mask path."""
    return (
        str(record["class_name"]),
        str(record["image_path"]),
        int(record["label"]),  # type: ignore[call-overload]
        str(record.get("mask_path", "")),
    )


def sort_records(records: Iterable[Record]) -> list[Record]:
    """Records sorted with :func:`record_key`."""
    return sorted(records, key=record_key)


def format_missing(items: Sequence[str], limit: int = MAX_LISTED) -> str:
    """``"3 missing: a, b, c"``, naming at most ``limit`` items then ``(+N more)``."""
    shown = ", ".join(items[:limit])
    more = len(items) - limit
    return f"{len(items)} missing: {shown}" + (f" (+{more} more)" if more > 0 else "")


def require_dir(dataset: str, root: Path, folder: Path, expected: str) -> None:
    """Raise :class:`LayoutError` unless ``folder`` (inside ``root``) is a directory.

    The message names the first missing path component and the folders that are there.
    """
    if folder.is_dir():
        return
    if not root.is_dir():
        raise LayoutError(dataset, root, expected, "no such folder")
    missing = folder
    while missing.parent != root and not missing.parent.is_dir():
        missing = missing.parent
    parent = missing.parent
    where = "the root" if parent == root else f"'{rel(parent, root)}'"
    kind = "a file, not a folder," if missing.exists() else "no"
    listing = ", ".join(p.name for p in list_dirs(parent)[:MAX_LISTED]) or "none"
    raise LayoutError(
        dataset,
        root,
        expected,
        f"{kind} '{missing.name}' under {where} (folders there: {listing})",
    )


def check_missing(
    dataset: str,
    root: Path,
    expected: str,
    missing: Sequence[str],
    limit: int | None = MAX_LISTED,
) -> None:
    """Raise one :class:`LayoutError` on missing files, naming ``limit`` (None: all) of them."""
    if missing:
        shown = len(missing) if limit is None else limit
        raise LayoutError(dataset, root, expected, format_missing(list(missing), shown))


def write_records(path: Path | str, records: Iterable[Record]) -> int:
    """Write ``records`` as sorted JSONL to ``path`` atomically; return the count.

    The file is written to a temporary file in the same folder and moved into place with
    :func:`os.replace`, so readers never see a half-written list.
    """
    rows = sort_records(records)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)


def read_records(path: Path | str) -> list[Record]:
    """Read a JSONL record file (blank lines ignored)."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def summary(dataset: str, path: Path, records: Sequence[Record]) -> str:
    """One-line summary: record, class and anomalous counts and the output path."""
    classes = {r["class_name"] for r in records}
    anomalous = sum(1 for r in records if r["label"] == 1)
    return (
        f"{dataset}: wrote {len(records)} records, {len(classes)} classes, "
        f"{anomalous} anomalous -> {path}"
    )


Outputs = dict[Path, list[Record]]


def default_out(root: Path, folder: str | None) -> Path:
    """Where a converter writes by default: ``<parent of ROOT>/<folder>/test.jsonl``.

    ``folder`` is the dataset's name in the paper profile (``data/<Name>/test.jsonl``, see
    ``aaclip.config.PAPER_TARGETS``), so a converted set is where the profile reads it
    whatever the raw folder is called; None (a set outside the paper): ``ROOT/test.jsonl``.
    """
    root = Path(root)
    if folder is None:
        return root / "test.jsonl"
    base = root if root.name not in ("", ".", "..") else root.resolve()
    return base.parent / folder / "test.jsonl"


def rebase(records: Iterable[Record], root: Path, folder: Path) -> list[Record]:
    """Records with paths relative to ``folder`` instead of ``root`` (e.g. ``../Raw/a.png``).

    A records file is read with its own folder as the dataset root, so a file written
    outside ``root`` must point back into it.
    """
    root, folder = Path(root).resolve(), Path(folder).resolve()
    if root == folder:
        return list(records)

    def move(p: object) -> str:
        return Path(os.path.relpath(root / str(p), folder)).as_posix()

    out = []
    for r in records:
        r = dict(r)
        r["image_path"] = move(r["image_path"])
        if r.get("mask_path"):
            r["mask_path"] = move(r["mask_path"])
        out.append(r)
    return out


def run_cli(
    dataset: str,
    convert: Callable[[argparse.Namespace], list[Record]],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    description: str | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    extra_outputs: Callable[[argparse.Namespace, Path], Outputs] | None = None,
    folder: Callable[[argparse.Namespace], str | None] | None = None,
) -> int:
    """Shared CLI: ``--root RAW_ROOT [--out OUT.jsonl]`` plus converter-specific options.

    ``--out`` defaults to :func:`default_out` with the paper profile's dataset name
    (``folder(args)``): ``data/CVC-ClinicDB`` is written to ``data/Colon_clinicDB/test.jsonl``,
    with paths relative to that folder (``../CVC-ClinicDB/images/1.png``), as the profile
    reads it. An explicit ``--out`` keeps paths relative to ROOT (the released convention:
    read it with ``root=ROOT``). Everything is converted and validated before anything is
    written. Prints one summary line per written file and returns 0; on a
    :class:`LayoutError` prints its one-line message to stderr and returns 2.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--root", type=Path, required=True, help="raw dataset root")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output JSONL (default: data/<Name>/test.jsonl beside ROOT, the file the paper "
        "profile reads, paths relative to it)",
    )
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        records = convert(args)
        out: Path = (
            args.out
            if args.out is not None
            else default_out(args.root, folder(args) if folder is not None else None)
        )
        outputs: Outputs = {out: records}
        if extra_outputs is not None:
            outputs.update(extra_outputs(args, out))
    except LayoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out is None:  # written where the profile reads: paths relative to each file
        outputs = {path: rebase(recs, args.root, path.parent) for path, recs in outputs.items()}
    for path, records in outputs.items():
        try:
            write_records(path, records)
        except OSError as exc:
            print(f"error: cannot write {path}: {exc}", file=sys.stderr)
            return 1
        print(summary(dataset, path, records))
    return 0
