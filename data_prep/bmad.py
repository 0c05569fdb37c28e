"""BMAD Brain, Liver and Retina as re-packed by MVFA: ``test/{good,Ungood}/img/*.png``.

Masks: ``test/Ungood/label/<name>`` (the released lists) or ``test/Ungood/anomaly_mask/
<name>`` (MVFA's copies); both namings are accepted, ``label`` first when both exist. The
class name is the dataset name (``Brain``, ``Liver``, ``Retina``), as in the released
lists; it comes from ``--name`` or, failing that, from the root folder's name (``Brain``,
``BrainMRI``, ``Brain_AD``, ``Retina_RESC_AD`` ...).

CLI: ``python -m data_prep.bmad --root RAW_ROOT [--name Brain|Liver|Retina] [--out ...]``.
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
    list_dirs,
    list_images,
    make_record,
    rel,
    require_dir,
    run_cli,
    sort_records,
    stem_index,
)

NAMES = ("Brain", "Liver", "Retina")
MASK_FOLDERS = ("label", "anomaly_mask")
NORMAL, ANOMALOUS = "good", "Ungood"


def infer_name(root: Path) -> str | None:
    """``Brain``/``Liver``/``Retina`` from a root folder name, or None if it says neither."""
    key = re.sub(r"[^a-z0-9]", "", Path(root).resolve().name.lower())
    if key.startswith("brain"):
        return "Brain"
    if key.startswith("liver"):
        return "Liver"
    if (key.startswith("retina") or key.startswith("resc")) and "oct2017" not in key:
        return "Retina"
    return None


def mask_folder(dataset: str, root: Path, split: str, folders: Sequence[str]) -> Path:
    """The first existing ``<split>/Ungood/<folder>`` among ``folders``."""
    base = root / split / ANOMALOUS
    for name in folders:
        if (base / name).is_dir():
            return base / name
    expected = " or ".join(f"{split}/{ANOMALOUS}/{n}/" for n in folders)
    require_dir(dataset, root, base, expected)
    found = ", ".join(p.name for p in list_dirs(base)) or "no sub-folders"
    raise LayoutError(dataset, root, expected, f"'{rel(base, root)}' holding {found}")


def medical_split(
    dataset: str,
    root: Path,
    split: str,
    class_name: str,
    mask_folders: Sequence[str] | None = MASK_FOLDERS,
    files: str = "*.png",
) -> list[Record]:
    """Records of ``<split>/{good,Ungood}/img`` under ``root``.

    With ``mask_folders`` every anomalous image must have a mask of the same name (else the
    same stem) in the first existing ``<split>/Ungood/<folder>``; with ``None`` anomalous
    records carry no ``mask_path`` (classification-only sets). ``files`` only words the
    expected layout in messages (any image suffix is read).
    """
    root = Path(root)
    layout = f"{split}/{{{NORMAL},{ANOMALOUS}}}/img/{files}"
    records: list[Record] = []
    groups = ((NORMAL, 0), (ANOMALOUS, 1))
    for group, _ in groups:
        require_dir(dataset, root, root / split / group / "img", layout)
    for group, label in groups:
        folder = root / split / group / "img"
        images = list_images(folder)
        if not images:
            raise LayoutError(dataset, root, layout, f"no images in '{split}/{group}/img'")
        if label == 0 or mask_folders is None:
            records += [make_record(rel(p, root), label, class_name) for p in images]
            continue
        masks_dir = mask_folder(dataset, root, split, mask_folders)
        masks = stem_index(masks_dir)
        missing: list[str] = []
        for image in images:
            mask = find_mask(masks, image)
            if mask is None:
                missing.append(rel(masks_dir / image.name, root))
                continue
            records.append(make_record(rel(image, root), 1, class_name, rel(mask, root)))
        check_missing(
            dataset,
            root,
            f"a mask in '{rel(masks_dir, root)}' for every anomalous image",
            missing,
        )
    return sort_records(records)


def resolve_name(root: Path, name: str | None) -> str:
    """The given ``name`` (checked) or the one inferred from the root folder."""
    if name is not None:
        if name not in NAMES:
            raise LayoutError("BMAD", root, f"a name among {', '.join(NAMES)}", repr(name))
        return name
    inferred = infer_name(root)
    if inferred is None:
        raise LayoutError(
            "BMAD",
            root,
            f"--name {'|'.join(NAMES)} or a root folder named after one",
            f"folder name '{Path(root).resolve().name}'",
        )
    return inferred


def convert(root: Path, name: str | None = None) -> list[Record]:
    """Records of the test split of a BMAD medical set; ``class_name`` = ``name``."""
    root = Path(root)
    name = resolve_name(root, name)
    dataset = f"BMAD {name}"
    require_dir(dataset, root, root, "test/{good,Ungood}/img/*.png")
    return medical_split(dataset, root, "test", name)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--name",
        choices=NAMES,
        default=None,
        help="dataset and class name (default: inferred from the root folder name)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--root RAW_ROOT [--name Brain|Liver|Retina] [--out OUT.jsonl]``."""
    return run_cli(
        "BMAD",
        lambda args: convert(args.root, args.name),
        argv,
        prog="python -m data_prep.bmad",
        folder=lambda args: resolve_name(args.root, args.name),
        description="Write the test records of BMAD Brain, Liver or Retina as JSONL.",
        add_arguments=_add_arguments,
    )


if __name__ == "__main__":
    sys.exit(main())
