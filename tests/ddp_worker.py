"""Run `aaclip` commands with every training stage's augmentation off (the test hook).

tests/test_distributed.py launches `python -m torch.distributed.run --nproc_per_node 2
tests/ddp_worker.py -- train … + test …` (commands separated by `+`). Augmentation draws
from torch's global stream, of which a rank sees only its own images' draws, so DDP equals
single-process training to float rounding with augmentation off (aaclip.distributed).
"""

from __future__ import annotations

import dataclasses
import sys

from aaclip.methods import Method


def no_augment(self: Method):
    return [dataclasses.replace(s, augment="none") for s in self.schedule(self.cfg)]


def commands(argv: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for arg in argv:
        out.append([]) if arg == "+" else out[-1].append(arg)
    return out


if __name__ == "__main__":
    Method.stages = no_augment
    from aaclip.cli import main

    for argv in commands(sys.argv[1:]):
        if rc := main(argv):
            sys.exit(rc)
