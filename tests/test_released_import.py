"""Import of the authors' released checkpoints (text_adapter.pth, image_adapter_N.pth)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from aaclip import checkpoints as ck
from aaclip.methods.aaclip import AAClip, AAClipConfig, load_released


def _released_files(tmp_path, model: AAClip, epoch=15):
    """Files in the released layout: {"epoch", "<part>": state_dict, "<part>_optimizer": …}."""
    torch.manual_seed(7)
    text = {k: torch.randn_like(v) for k, v in model.text_adapter.state_dict().items()}
    image = {k: torch.randn_like(v) for k, v in model.image_adapter.state_dict().items()}
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(2))]).state_dict()
    tp, ip = tmp_path / "text_adapter.pth", tmp_path / f"image_adapter_{epoch}.pth"
    torch.save({"epoch": 5, "text_adapter": text, "text_optimizer": opt}, tp)
    torch.save({"epoch": epoch, "image_adapter": image, "image_optimizer": opt}, ip)
    return tp, ip, text, image


def test_released_key_layout_is_mirrored(tiny_clip):
    model = AAClip(tiny_clip, AAClipConfig())
    keys = set(model.image_adapter.state_dict())
    assert "layer_adapters.0.fc.0.weight" in keys  # Linear inside Sequential(Linear, LeakyReLU)
    assert "seg_proj.3.fc.weight" in keys and "det_proj.fc.weight" in keys  # relu=False: Linear
    assert set(model.text_adapter.state_dict()) == {"0.fc.0.weight", "1.fc.0.weight"}


def test_import_roundtrip_and_outputs_use_the_weights(tiny_clip, tmp_path):
    model = AAClip(tiny_clip, AAClipConfig(class_descriptions="plain"))
    tp, ip, text, image = _released_files(tmp_path, model)
    load_released(model, tp, ip)
    for k, v in model.text_adapter.state_dict().items():
        assert torch.equal(v, text[k])
    for k, v in model.image_adapter.state_dict().items():
        assert torch.equal(v, image[k])


def test_relu_mismatch_is_refused_with_a_hint(tiny_clip, tmp_path):
    with_relu = AAClip(tiny_clip, AAClipConfig(relu=True))
    _, ip, _, _ = _released_files(tmp_path, with_relu)
    plain = AAClip(tiny_clip, AAClipConfig(relu=False))
    with pytest.raises(ck.CheckpointMismatchError, match="relu switch"):
        load_released(plain, None, ip)


def test_not_an_aaclip_file_is_refused(tiny_clip, tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"model": {}}, path)
    with pytest.raises(ck.CheckpointMismatchError, match="no 'image_adapter' entry"):
        load_released(AAClip(tiny_clip), None, path)


def test_cli_import_then_predict(tiny_clip, tmp_path, synthetic_root):
    model = AAClip(tiny_clip, AAClipConfig(class_descriptions="plain"))
    tp, ip, _, _ = _released_files(tmp_path, model)
    out = tmp_path / "imported.safetensors"
    base = [sys.executable, "-m", "aaclip.cli"]
    proc = subprocess.run(
        [
            *base,
            "import-released",
            "--profile",
            "smoke",
            "--set",
            "backbone.image_size=64",
            "--text",
            str(tp),
            "--image",
            str(ip),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    tensors, meta = ck.load_adapters(out, tiny_clip.identity)
    assert meta["imported_from"] == [str(tp), str(ip)]
    proc = subprocess.run(
        [
            *base,
            "predict",
            "--checkpoint",
            str(out),
            "--description",
            "grass",
            "--out",
            str(tmp_path / "pred"),
            str(synthetic_root / "grass" / "test"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "pred" / "scores.csv").is_file()


def test_class_without_description_falls_back_with_warning():
    from aaclip import prompts

    with pytest.warns(UserWarning, match="no official description"):
        assert prompts.describe("metal_gear", "MVTec") == "metal gear"
    assert prompts.describe("pill", "MVTec").startswith("oval white pill")
    assert prompts.domain_of("Brain") == "medical" and prompts.domain_of("unknown") == "industrial"
