"""Checkpoints: files that are not ours are named for what they are; weights hashed by content."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import save_file

from aaclip import backbone as bb
from aaclip import checkpoints as ck
from aaclip import digests


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(digests.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(bb.WEIGHTS_ENV, raising=False)


def _weights(tmp_path, name="w.pt", seed=0, dtype=torch.float32):
    model = bb.create_backbone("aaclip-tiny", image_size=64, init_seed=seed)
    state = {k: v.to(dtype).contiguous() for k, v in model.clip.state_dict().items()}
    path = tmp_path / name
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def _checkpoint(path, identity):
    ck.save_adapters(path, {"a": torch.zeros(2)}, {"backbone": identity, "config": {}})
    return path


# ------------------------------------------- files that are not checkpoints (issue 8.4)


def _not_checkpoints(tmp_path):
    released = tmp_path / "image_adapter_15.pth"
    torch.save(
        {"epoch": 15, "image_adapter": {"w": torch.zeros(1)}, "image_optimizer": {}}, released
    )
    text = tmp_path / "text_adapter.pth"
    torch.save({"epoch": 5, "text_adapter": {"0.fc.0.weight": torch.zeros(1)}}, text)
    resume = tmp_path / "resume.pt"
    torch.save({"stage": 2, "epoch": 4, "optimizer": {"state": {}, "param_groups": []}}, resume)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(64))
    return {
        released: "the authors' released AA-CLIP image adapter (image_adapter_N.pth, epoch 15)",
        text: "the authors' released AA-CLIP text adapter (text_adapter.pth, epoch 5)",
        resume: "a run's training state (resume.pt of stage 2, epoch 4: optimizer state",
        _weights(tmp_path): "CLIP backbone weights (a PyTorch state dict",
        plain: "a safetensors file of 1 tensor (e.g. 'x'), not CLIP weights",
        junk: "not a safetensors file",
    }


def test_files_that_are_not_checkpoints_are_one_line_saying_what_they_are(tmp_path):
    for path, what in _not_checkpoints(tmp_path).items():
        assert describe_starts(path, what)
        for call in (ck.read_meta, ck.load_adapters, ck.check_is_checkpoint):
            with pytest.raises(ck.NotACheckpointError) as err:
                call(path)
            msg = str(err.value)
            assert "\n" not in msg, msg
            assert msg.startswith(f"{path}: {what}"), msg
            assert "not an aaclip checkpoint" in msg and "aaclip import-released" in msg


def describe_starts(path, what):
    return ck.describe_file(path).startswith(what)


def test_describe_our_checkpoint(tmp_path):
    ident = bb.create_backbone("aaclip-tiny", image_size=64).identity
    path = tmp_path / "c.safetensors"
    ck.save_adapters(
        path, {"a": torch.zeros(1)}, {"stage": 2, "epoch": 3, "backbone": ident, "config": {}}
    )
    assert ck.describe_file(path) == (
        "an aaclip checkpoint (aaclip, stage 2, epoch 3; backbone aaclip-tiny at 64 px)"
    )
    assert ck.check_is_checkpoint(path)["epoch"] == 3


def test_cli_predict_with_released_adapter_is_one_line_exit_2(tmp_path):
    path = tmp_path / "image_adapter_15.pth"
    torch.save({"epoch": 15, "image_adapter": {"w": torch.zeros(1)}}, path)
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(img)
    proc = subprocess.run(
        [sys.executable, "-m", "aaclip.cli", "predict", "--checkpoint", str(path)]
        + ["--description", "x", "--out", str(tmp_path / "p"), str(img)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "released AA-CLIP image adapter" in lines[0]
    assert "aaclip import-released" in lines[0]


# ------------------------------------------------ backbone identity by content (issue 8.8)


def test_identity_records_a_content_hash_kept_by_conversion_and_renaming(tmp_path):
    pt = _weights(tmp_path, "ViT-L-14-336.pt")
    st = _weights(tmp_path, "converted.safetensors")
    half = _weights(tmp_path, "half.pt", dtype=torch.float16)
    a = bb.create_backbone("aaclip-tiny", weights=pt, image_size=64).identity
    b = bb.create_backbone("aaclip-tiny", weights=st, image_size=64).identity
    assert len(a["weights_sha256"]) == 64 and a["weights_sha256"] == b["weights_sha256"]
    ckpt = _checkpoint(tmp_path / "c.safetensors", a)
    ck.load_adapters(ckpt, b)  # renamed + converted: still valid
    # fp16 values are different weights than the fp32 ones they were rounded from
    c = bb.create_backbone("aaclip-tiny", weights=half, image_size=64).identity
    assert c["weights_sha256"] != a["weights_sha256"]
    # ... but an fp16 file and its fp32 conversion hold the same values
    widened = tmp_path / "half_as_fp32.safetensors"
    save_file({k: v.float().contiguous() for k, v in torch.load(half).items()}, str(widened))
    d = bb.create_backbone("aaclip-tiny", weights=widened, image_size=64).identity
    assert d["weights_sha256"] == c["weights_sha256"]


def test_other_weights_under_the_same_name_are_refused(tmp_path):
    first = tmp_path / "one"
    second = tmp_path / "two"
    first.mkdir(), second.mkdir()
    a = bb.create_backbone("aaclip-tiny", weights=_weights(first, "ViT-L-14-336.pt"), image_size=64)
    b = bb.create_backbone(
        "aaclip-tiny", weights=_weights(second, "ViT-L-14-336.pt", seed=1), image_size=64
    )
    assert a.identity["weights"] == b.identity["weights"]
    ckpt = _checkpoint(tmp_path / "c.safetensors", a.identity)
    with pytest.raises(ck.CheckpointMismatchError) as err:
        ck.load_adapters(ckpt, b.identity)
    msg = str(err.value)
    assert "weights: checkpoint 'ViT-L-14-336.pt' (sha256 " in msg
    assert a.identity["weights_sha256"][:12] in msg
    assert b.identity["weights_sha256"][:12] in msg


def test_random_backbones_and_files_stay_apart(tmp_path):
    rand = bb.create_backbone("aaclip-tiny", image_size=64).identity
    assert rand["weights_sha256"] is None
    ckpt = _checkpoint(tmp_path / "c.safetensors", rand)
    ck.load_adapters(ckpt, rand)
    other_seed = bb.create_backbone("aaclip-tiny", image_size=64, init_seed=1).identity
    with pytest.raises(ck.CheckpointMismatchError, match="random-init-seed0"):
        ck.load_adapters(ckpt, other_seed)
    filed = bb.create_backbone("aaclip-tiny", weights=_weights(tmp_path), image_size=64)
    with pytest.raises(ck.CheckpointMismatchError, match="no hash"):
        ck.load_adapters(ckpt, filed.identity)


def test_old_checkpoints_with_only_a_file_name_compare_names_with_a_note(tmp_path):
    ident = bb.create_backbone("aaclip-tiny", weights=_weights(tmp_path), image_size=64).identity
    old = {k: v for k, v in ident.items() if k != "weights_sha256"}
    old["weights_sha1_prefix"] = "0123456789ab"
    ckpt = _checkpoint(tmp_path / "old.safetensors", old)
    with pytest.warns(UserWarning, match="by file name"):
        ck.load_adapters(ckpt, ident)
    renamed = _checkpoint(tmp_path / "old2.safetensors", {**old, "weights": "other.pt"})
    with pytest.raises(ck.CheckpointMismatchError, match="weights: checkpoint 'other.pt'"):
        ck.load_adapters(renamed, ident)
    rand_old = {k: v for k, v in bb.create_backbone("aaclip-tiny", image_size=64).identity.items()}
    rand_old.pop("weights_sha256")
    ckpt = _checkpoint(tmp_path / "old3.safetensors", rand_old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no note for a random backbone: nothing to hash
        ck.load_adapters(ckpt, {**rand_old, "weights_sha256": None})


def test_hash_is_computed_once_per_file_and_again_when_it_changes(tmp_path, monkeypatch):
    path = _weights(tmp_path)
    calls = []
    real = digests.state_sha256
    monkeypatch.setattr(digests, "state_sha256", lambda s: calls.append(1) or real(s))
    first = bb.create_backbone("aaclip-tiny", weights=path, image_size=64).identity
    again = bb.create_backbone("aaclip-tiny", weights=path, image_size=64).identity
    assert len(calls) == 1 and first["weights_sha256"] == again["weights_sha256"]
    cache = json.loads((tmp_path / "cache" / digests.CACHE_FILE).read_text())
    (entry,) = cache.values()
    assert entry["sha256"] == first["weights_sha256"] and entry["size"] == path.stat().st_size
    _weights(tmp_path, seed=3)  # same path, new content (size equal, mtime new)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    third = bb.create_backbone("aaclip-tiny", weights=path, image_size=64).identity
    assert len(calls) == 2 and third["weights_sha256"] != first["weights_sha256"]


def test_unwritable_cache_only_costs_time(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv(digests.CACHE_ENV, str(blocker / "sub"))  # cannot be a folder
    path = _weights(tmp_path)
    ident = bb.create_backbone("aaclip-tiny", weights=path, image_size=64).identity
    assert len(ident["weights_sha256"]) == 64


def test_file_sha256_streams_the_whole_file(tmp_path):
    import hashlib

    path = tmp_path / "big.bin"
    data = os.urandom((1 << 22) + 123)
    path.write_bytes(data)
    assert digests.file_sha256(path) == hashlib.sha256(data).hexdigest()
