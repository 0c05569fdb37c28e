"""BTAD: ``<01|02|03>/test/{ok,ko}/*`` (png or bmp).

Masks: ``<id>/ground_truth/ko/<stem>.<ext>``, matched by stem because the extension of a
mask need not be the image's (the released list has ``01`` bmp images with png masks and
``03`` bmp images with bmp masks); a ``.png`` mask wins when several share the stem.
Every visible sub-folder of the root is a product (class name = folder name).

CLI: ``python -m data_prep.btad --root RAW_ROOT [--out OUT.jsonl]``.
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

DATASET = "BTAD"
LAYOUT = "<01|02|03>/test/{ok,ko}/*.png|bmp"
GROUPS = {"ok": 0, "ko": 1}


def convert(root: Path) -> list[Record]:
    """Records of the BTAD test split at ``root``."""
    root = Path(root)
    require_dir(DATASET, root, root, LAYOUT)
    products = list_dirs(root)
    if not products:
        raise LayoutError(DATASET, root, LAYOUT, "no product folders in the root")
    records: list[Record] = []
    missing: list[str] = []
    for product in products:
        cls = product.name
        test_dir = product / "test"
        require_dir(DATASET, root, test_dir, LAYOUT)
        names = [d.name for d in list_dirs(test_dir)]
        unknown = [n for n in names if n not in GROUPS]
        if unknown or not names:
            found = ", ".join(names) or "no sub-folders"
            raise LayoutError(DATASET, root, LAYOUT, f"'{cls}/test' holding {found}")
        masks = stem_index(product / "ground_truth" / "ko")
        count = 0
        for name in names:
            images = list_images(test_dir / name)
            count += len(images)
            for image in images:
                if GROUPS[name] == 0:
                    records.append(make_record(rel(image, root), 0, cls))
                    continue
                mask = find_mask(masks, image)
                if mask is None:
                    missing.append(f"{cls}/ground_truth/ko/{image.stem}.png|bmp")
                    continue
                records.append(make_record(rel(image, root), 1, cls, rel(mask, root)))
        if count == 0:
            raise LayoutError(DATASET, root, LAYOUT, f"no images in '{cls}/test/ok|ko'")
    check_missing(
        DATASET, root, "a mask <id>/ground_truth/ko/<stem>.png|bmp for every ko image", missing
    )
    return sort_records(records)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--root RAW_ROOT [--out OUT.jsonl]``."""
    return run_cli(
        DATASET,
        lambda args: convert(args.root),
        argv,
        prog="python -m data_prep.btad",
        folder=lambda args: DATASET,
        description=f"Write the BTAD test records ({LAYOUT}) as JSONL.",
    )


if __name__ == "__main__":
    sys.exit(main())
