"""VisA: the test split listed in ``split_csv/1cls.csv``.

The CSV has the columns ``object, split, label, image, mask``; ``split`` is ``train`` or
``test``, ``label`` is ``normal`` or ``anomaly``, ``image`` and ``mask`` are paths relative
to the root (``<cls>/Data/Images/{Normal,Anomaly}/*.JPG``,
``<cls>/Data/Masks/Anomaly/*.png``; ``mask`` is empty for normal rows). Test rows become
records with ``class_name = object``; every listed file must exist.

CLI: ``python -m data_prep.visa --root RAW_ROOT [--out OUT.jsonl] [--csv split_csv/1cls.csv]``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from data_prep._common import (
    MAX_LISTED,
    LayoutError,
    Record,
    check_missing,
    make_record,
    require_dir,
    run_cli,
    sort_records,
)

DATASET = "VisA"
SPLIT_CSV = "split_csv/1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
LABELS = {"normal": 0, "anomaly": 1}


def _clean(value: str | None) -> str:
    return (value or "").strip().replace("\\", "/")


def _inside(path: str) -> bool:
    """A non-empty relative path that stays inside the root."""
    parts = PurePosixPath(path).parts
    return bool(parts) and not PurePosixPath(path).is_absolute() and ".." not in parts


def read_split(root: Path, csv_path: Path) -> list[dict[str, str]]:
    """The rows of the split CSV, checked for the required columns."""
    expected = f"{rel_or_abs(csv_path, root)} with columns {', '.join(COLUMNS)}"
    if not csv_path.is_file():
        require_dir(DATASET, root, csv_path.parent, expected)
        raise LayoutError(DATASET, root, expected, f"no file '{csv_path.name}'")
    with open(csv_path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        lacking = [c for c in COLUMNS if c not in header]
        if lacking:
            raise LayoutError(
                DATASET,
                root,
                expected,
                f"columns {', '.join(header) or '(none)'} (missing {', '.join(lacking)})",
            )
        return [{k.strip(): _clean(v) for k, v in row.items() if k is not None} for row in reader]


def rel_or_abs(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it, else as given."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def convert(root: Path, csv_path: Path | None = None) -> list[Record]:
    """Records of the VisA test split; ``csv_path`` defaults to ``root/split_csv/1cls.csv``."""
    root = Path(root)
    csv_path = Path(csv_path) if csv_path is not None else root / SPLIT_CSV
    require_dir(DATASET, root, root, f"{SPLIT_CSV} and <class>/Data/Images/...")
    rows = read_split(root, csv_path)
    records: list[Record] = []
    missing: list[str] = []
    bad_labels: set[str] = set()
    no_mask: list[str] = []
    blank: list[str] = []
    for line, row in enumerate(rows, start=2):
        if row["split"].lower() != "test":
            continue
        label = LABELS.get(row["label"].lower())
        if label is None:
            bad_labels.add(row["label"])
            continue
        if not row["object"] or not _inside(row["image"]) or not _inside(row["mask"] or "x"):
            blank.append(f"line {line}")
            continue
        image, mask = row["image"], row["mask"]
        if not (root / image).is_file():
            missing.append(image)
        if label == 1:
            if not mask:
                no_mask.append(image)
            elif not (root / mask).is_file():
                missing.append(mask)
        records.append(make_record(image, label, row["object"], mask if label else None))
    where = rel_or_abs(csv_path, root)
    if bad_labels:
        raise LayoutError(
            DATASET,
            root,
            f"labels 'normal' or 'anomaly' in {where}",
            f"{', '.join(repr(v) for v in sorted(bad_labels))}",
        )
    if blank:
        raise LayoutError(
            DATASET,
            root,
            f"an object and root-relative image/mask paths on every test row of {where}",
            f"{len(blank)} rows without: {', '.join(blank[:MAX_LISTED])}",
        )
    if no_mask:
        raise LayoutError(
            DATASET,
            root,
            f"a mask path on every anomaly row of {where}",
            f"{len(no_mask)} without one: {', '.join(no_mask[:MAX_LISTED])}",
        )
    check_missing(DATASET, root, f"every test file listed in {where}", missing)
    if not records:
        raise LayoutError(
            DATASET, root, f"rows with split 'test' in {where}", f"none among {len(rows)} rows"
        )
    return sort_records(records)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--csv", type=Path, default=None, help=f"split CSV (default: ROOT/{SPLIT_CSV})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--root RAW_ROOT [--out OUT.jsonl] [--csv CSV]``."""
    return run_cli(
        DATASET,
        lambda args: convert(args.root, args.csv),
        argv,
        prog="python -m data_prep.visa",
        folder=lambda args: DATASET,
        description=f"Write the VisA test records listed in {SPLIT_CSV} as JSONL.",
        add_arguments=_add_arguments,
    )


if __name__ == "__main__":
    sys.exit(main())
