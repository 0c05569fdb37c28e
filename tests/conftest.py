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
