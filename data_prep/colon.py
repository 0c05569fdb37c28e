"""Colonoscopy polyp sets (CVC-ClinicDB, CVC-ColonDB, Kvasir, CVC-300): ``images/*.png``.

Masks ``masks/<name>`` (same file name, else same stem). Every image is anomalous. The
class name follows the released AA-CLIP lists, which are not uniform:

=============  ==================
``--name``     ``class_name``
=============  ==================
CVC-ClinicDB   ``Colon_clinicDB``
CVC-ColonDB    ``Colon_colonDB``
Kvasir         ``Kvasir``
CVC-300        ``CVC-300``
=============  ==================

``--name`` defaults to the one the root folder's name matches (``CVC-ClinicDB``,
``Colon_clinicDB``, ``ClinicDB``, ``kvasir``, ``CVC-300``, ``cvc300`` ...);
``--class-name`` overrides the class name.

CLI: ``python -m data_prep.colon --root RAW_ROOT [--name NAME] [--out OUT.jsonl]``; by
default the records go to ``<parent of RAW_ROOT>/<folder>/test.jsonl`` with the folder the
paper profile reads (:data:`PAPER_FOLDERS`: ``Colon_clinicDB``, ``Colon_colonDB``,
``Colon_Kvasir``, ``Colon_cvc300``).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from data_prep._common import (
    LayoutError,
    Record,
    check_missing,
    find_mask,
    list_images,
    make_record,
    rel,
    require_dir,
    run_cli,
    sort_records,
    stem_index,
)

CLASS_NAMES = {
    "CVC-ClinicDB": "Colon_clinicDB",
    "CVC-ColonDB": "Colon_colonDB",
    "Kvasir": "Kvasir",
    "CVC-300": "CVC-300",
}
"""Dataset name -> class name in the released lists."""

PAPER_FOLDERS = {
    "CVC-ClinicDB": "Colon_clinicDB",
    "CVC-ColonDB": "Colon_colonDB",
    "Kvasir": "Colon_Kvasir",
    "CVC-300": "Colon_cvc300",
}
"""Dataset name -> folder the paper profile reads (``data/<folder>/test.jsonl``)."""

_ALIASES = {
    "CVC-ClinicDB": ("cvcclinicdb", "colonclinicdb", "clinicdb"),
    "CVC-ColonDB": ("cvccolondb", "coloncolondb", "colondb"),
    "Kvasir": ("kvasir", "colonkvasir", "kvasirseg"),
    "CVC-300": ("cvc300", "coloncvc300", "endoscene"),
}
LAYOUT = "images/*.png with masks/<same name>"


def infer_name(root: Path) -> str | None:
    """The dataset name a root folder's name matches, or None."""
    key = re.sub(r"[^a-z0-9]", "", Path(root).resolve().name.lower())
    for name, aliases in _ALIASES.items():
        if key in aliases:
            return name
    return None


def resolve_name(root: Path, name: str | None) -> str:
    """The given dataset ``name`` (checked) or the one inferred from the root folder."""
    choices = "|".join(CLASS_NAMES)
    if name is None:
        name = infer_name(root)
        if name is None:
            raise LayoutError(
                "Colon",
                root,
                f"--name {choices} or a root folder named after one",
                f"folder name '{Path(root).resolve().name}'",
            )
    if name not in CLASS_NAMES:
        raise LayoutError("Colon", root, f"a name among {choices}", repr(name))
    return name


def convert(root: Path, name: str | None = None, class_name: str | None = None) -> list[Record]:
    """Records of a colon polyp set at ``root``, all anomalous with masks."""
    root = Path(root)
    name = resolve_name(root, name)
    cls = class_name or CLASS_NAMES[name]
    images_dir, masks_dir = root / "images", root / "masks"
    require_dir(name, root, images_dir, LAYOUT)
    require_dir(name, root, masks_dir, LAYOUT)
    images = list_images(images_dir)
    if not images:
        raise LayoutError(name, root, LAYOUT, "no images in 'images'")
    masks = stem_index(masks_dir)
    records: list[Record] = []
    missing: list[str] = []
    for image in images:
        mask = find_mask(masks, image)
        if mask is None:
            missing.append(f"masks/{image.name}")
            continue
        records.append(make_record(rel(image, root), 1, cls, rel(mask, root)))
    check_missing(name, root, "a mask masks/<name> for every image", missing)
    return sort_records(records)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--name",
        choices=tuple(CLASS_NAMES),
        default=None,
        help="dataset (default: inferred from the root folder name)",
    )
    parser.add_argument(
        "--class-name", default=None, help="override the class name of the released lists"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--root RAW_ROOT [--name NAME] [--class-name C] [--out OUT.jsonl]``."""
    return run_cli(
        "Colon",
        lambda args: convert(args.root, args.name, args.class_name),
        argv,
        prog="python -m data_prep.colon",
        folder=lambda args: PAPER_FOLDERS[resolve_name(args.root, args.name)],
        description="Write the records of a colon polyp set (all anomalous) as JSONL.",
        add_arguments=_add_arguments,
    )


if __name__ == "__main__":
    sys.exit(main())
