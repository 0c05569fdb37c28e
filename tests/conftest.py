"""Shared fixtures: a tiny random CLIP and the embedded synthetic dataset, built once."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pytest
import torch

logging.getLogger().setLevel(logging.ERROR)
torch.set_num_threads(1)  # tiny tensors: threading overhead dominates on 2 cores
# the weights-digest cache (aaclip.digests) of the tests, never the user's ~/.cache/aaclip;
# set at import so that the CLI subprocesses of the tests inherit it
os.environ["AACLIP_CACHE"] = tempfile.mkdtemp(prefix="aaclip-test-cache-")

# The longest files first: `make test` runs two pytest-xdist workers that take whole files in
# collection order, so the notebook tier and the training-heavy files start at once instead
# of one of them trailing alone at the end.
LONGEST_FIRST = ("test_notebooks.py", "test_learning.py", "test_learning_mvfa.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order inside each file is kept


@pytest.fixture(scope="session")
def tiny_clip():
    from aaclip.backbone import create_backbone

    torch.manual_seed(0)
    return create_backbone("aaclip-tiny", image_size=64)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from data_prep.synthetic import build

    root = tmp_path_factory.mktemp("synthetic")
    build(root, seed=0)
    return root
