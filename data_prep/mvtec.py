"""MVTec-AD layout (also MPDD): ``<cls>/test/<defect|good>/*.png``.

Masks: ``<cls>/ground_truth/<defect>/<stem>_mask.png``. Every visible sub-folder of the
root is a class. ``good`` images are normal (no ``mask_path``); images in any other
``test`` sub-folder are anomalous and must have a mask.

CLI: ``python -m data_prep.mvtec --root RAW_ROOT [--out OUT.jsonl]``.
"""

from __future__ import annotations

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

DATASET = "MVTec-AD"
PAPER_FOLDER = "MVTec"
"""The folder the paper profile reads (``data/MVTec/test.jsonl``)."""
NORMAL_FOLDER = "good"
LAYOUT = "<class>/test/<defect|good>/*.png"
MASK_LAYOUT = "<class>/ground_truth/<defect>/<stem>_mask.png"


def convert(root: Path, dataset: str = DATASET) -> list[Record]:
    """Records of the test split of an MVTec-style tree at ``root``.

    ``dataset`` only names the dataset in error messages (``"MPDD"`` for MPDD).
    """
    root = Path(root)
    require_dir(dataset, root, root, LAYOUT)
    classes = list_dirs(root)
    if not classes:
        raise LayoutError(dataset, root, LAYOUT, "no class folders in the root")
    records: list[Record] = []
    missing: list[str] = []
    for cls_dir in classes:
        cls = cls_dir.name
        test_dir = cls_dir / "test"
        require_dir(dataset, root, test_dir, LAYOUT)
        groups = list_dirs(test_dir)
        loose = list_images(test_dir)
        if loose:
            raise LayoutError(
                dataset,
                root,
                LAYOUT,
                f"{len(loose)} images directly in '{cls}/test' (not in a defect folder)",
            )
        count = 0
        for group in groups:
            images = list_images(group)
            count += len(images)
            if group.name == NORMAL_FOLDER:
                records += [make_record(rel(p, root), 0, cls) for p in images]
                continue
            masks = stem_index(cls_dir / "ground_truth" / group.name)
            for image in images:
                mask = find_mask(masks, image, suffix="_mask")
                if mask is None:
                    missing.append(f"{cls}/ground_truth/{group.name}/{image.stem}_mask.png")
                    continue
                records.append(make_record(rel(image, root), 1, cls, rel(mask, root)))
        if count == 0:
            found = ", ".join(g.name for g in groups) or "no sub-folders"
            raise LayoutError(
                dataset, root, LAYOUT, f"no images in '{cls}/test' (sub-folders: {found})"
            )
    check_missing(dataset, root, f"a mask {MASK_LAYOUT} for every defect image", missing)
    return sort_records(records)


def main(
    argv: Sequence[str] | None = None,
    dataset: str = DATASET,
    prog: str | None = None,
    folder: str = PAPER_FOLDER,
) -> int:
    """Command line for an MVTec-style dataset named ``dataset`` (``data/<folder>`` by default)."""
    return run_cli(
        dataset,
        lambda args: convert(args.root, dataset),
        argv,
        prog=prog or "python -m data_prep.mvtec",
        description=f"Write the {dataset} test records ({LAYOUT}) as JSONL.",
        folder=lambda args: folder,
    )


if __name__ == "__main__":
    sys.exit(main())
