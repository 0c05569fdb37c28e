"""MPDD: the MVTec-AD layout (``<cls>/test/<defect|good>/*.png``), named MPDD in messages.

CLI: ``python -m data_prep.mpdd --root RAW_ROOT [--out OUT.jsonl]``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from data_prep import mvtec
from data_prep._common import Record

DATASET = "MPDD"


def convert(root: Path) -> list[Record]:
    """Records of the MPDD test split at ``root`` (MVTec layout)."""
    return mvtec.convert(root, dataset=DATASET)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--root RAW_ROOT [--out OUT.jsonl]``."""
    return mvtec.main(argv, dataset=DATASET, prog="python -m data_prep.mpdd", folder=DATASET)


if __name__ == "__main__":
    sys.exit(main())
