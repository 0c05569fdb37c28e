"""Backbone loading (local files only), tiny configs, level scaling and V-V attention."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from aaclip import backbone as bb


def test_tiny_configs_registered():
    assert "aaclip-tiny" in bb.tiny_model_names()
    import open_clip

    assert "aaclip-tiny" in open_clip.list_models()


@pytest.mark.parametrize(
    ("depth", "levels"), [(24, (6, 12, 18, 24)), (12, (3, 6, 9, 12)), (4, (1, 2, 3, 4))]
)
def test_levels_scale_with_depth(depth, levels):
    assert bb.default_levels(depth) == levels


def test_scaled_counts_match_paper_at_full_depth():
    assert bb.scaled_count(6, 24, 24) == 6
    assert bb.scaled_count(19, 24, 24) == 19
    assert bb.scaled_count(3, 12, 4) == 1


def test_random_init_is_frozen_and_eval(tiny_clip):
    assert not any(p.requires_grad for p in tiny_clip.clip.parameters())
    assert not tiny_clip.clip.training
    assert tiny_clip.identity["weights"] == "random-init-seed0"


def test_random_backbone_is_the_same_in_every_process_state():
    torch.manual_seed(1)
    a = bb.create_backbone("aaclip-tiny", image_size=64)
    torch.randn(100)
    b = bb.create_backbone("aaclip-tiny", image_size=64)
    c = bb.create_backbone("aaclip-tiny", image_size=64, init_seed=1)
    pairs = zip(a.clip.parameters(), b.clip.parameters(), strict=True)
    assert all(torch.equal(x, y) for x, y in pairs)
    assert not torch.equal(a.clip.visual.conv1.weight, c.clip.visual.conv1.weight)


@pytest.mark.parametrize("suffix", [".safetensors", ".bin", ".pt"])
def test_local_weights_roundtrip(tmp_path, tiny_clip, suffix):
    state = {k: v.clone() for k, v in tiny_clip.clip.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    torch.manual_seed(123)  # a different random init, overwritten by the file
    model = bb.create_backbone("aaclip-tiny", weights=path, image_size=64)
    for k, v in model.clip.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert model.identity["weights"] == path.name


def test_torchscript_archive_is_the_documented_exception(tmp_path, tiny_clip):
    """OpenAI's .pt files are TorchScript archives: weights_only cannot read them."""

    class Holder(torch.nn.Module):
        def __init__(self, state):
            super().__init__()
            for i, v in enumerate(state.values()):
                self.register_buffer(f"b{i}", v.clone())
            self.names = list(state)

        def forward(self, x):
            return x

    state = tiny_clip.clip.state_dict()
    scripted = torch.jit.script(Holder(state))
    path = tmp_path / "openai.pt"
    scripted.save(str(path))
    loaded = bb.load_state_dict(path)
    assert len(loaded) == len(state)


def test_image_size_override_resizes_positional_embedding(tmp_path, tiny_clip):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_clip.clip.state_dict().items()}, str(path))
    big = bb.create_backbone("aaclip-tiny", weights=path, image_size=96)
    assert big.clip.visual.positional_embedding.shape[0] == (96 // 8) ** 2 + 1
    first = tiny_clip.clip.visual.positional_embedding[0]
    assert torch.equal(big.clip.visual.positional_embedding[0], first)
    assert big.identity["image_size"] == 96


def test_wrong_weights_file_is_refused_by_name(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"something": torch.zeros(3)}, str(path))
    with pytest.raises(ValueError, match="other.safetensors.*does not fit aaclip-tiny"):
        bb.create_backbone("aaclip-tiny", weights=path, image_size=64)


def test_missing_weights_message_names_file_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv(bb.WEIGHTS_ENV, raising=False)
    missing = tmp_path / "ViT-L-14-336.pt"
    with pytest.raises(bb.WeightsNotFoundError) as err:
        bb.create_backbone("ViT-L-14-336", weights=missing)
    msg = str(err.value)
    assert str(missing) in msg and bb.WEIGHTS_ENV in msg and "--weights" in msg


def test_missing_weights_cli_exit_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aaclip.cli",
            "bench",
            "--backbone",
            "aaclip-tiny",
            "--image-size",
            "64",
            "--weights",
            str(tmp_path / "nope.pt"),
            "--no-metrics",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "nope.pt" in proc.stderr and bb.WEIGHTS_ENV in proc.stderr


def test_quick_gelu_switch():
    gelu = bb.create_backbone("aaclip-tiny", image_size=64)
    quick = bb.create_backbone("aaclip-tiny", image_size=64, quick_gelu=True)
    act = gelu.clip.visual.transformer.resblocks[0].mlp.gelu
    qact = quick.clip.visual.transformer.resblocks[0].mlp.gelu
    assert type(act) is torch.nn.GELU
    assert type(qact).__name__ == "QuickGELU"


def test_patch_levels_via_open_clip(tiny_clip):
    x = torch.randn(2, 3, 64, 64)
    levels = bb.patch_levels(tiny_clip.clip, x, (1, 2, 3, 4))
    assert len(levels) == 4 and levels[0].shape == (2, 64, 64)


def test_vv_attention_batch_axis_mixes_images_tokens_axis_does_not(tiny_clip):
    attn = tiny_clip.clip.visual.transformer.resblocks[-1].attn
    torch.manual_seed(0)
    x = torch.randn(3, 10, 64)
    for axis, independent in (("tokens", True), ("batch", False)):
        alone = bb.vv_attention(attn, x[:1], axis)
        together = bb.vv_attention(attn, x, axis)[:1]
        assert torch.allclose(alone, together, atol=1e-6) == independent, axis


def test_vv_attention_batch_axis_at_batch_one_is_value_projection(tiny_clip):
    attn = tiny_clip.clip.visual.transformer.resblocks[0].attn
    x = torch.randn(1, 7, 64)
    c = 64
    v = torch.nn.functional.linear(x, attn.in_proj_weight[2 * c :], attn.in_proj_bias[2 * c :])
    assert torch.allclose(bb.vv_attention(attn, x, "batch"), attn.out_proj(v), atol=1e-6)


def test_vv_attention_rejects_unknown_axis(tiny_clip):
    with pytest.raises(ValueError, match="vv_attention_axis"):
        attn = tiny_clip.clip.visual.transformer.resblocks[0].attn
        bb.vv_attention(attn, torch.zeros(1, 2, 64), "x")


def test_surgery_shares_prefix_and_returns_unit_features(tiny_clip):
    x = torch.randn(2, 3, 64, 64)
    patches, emb = bb.surgery_features(tiny_clip.clip, x, (1, 2, 3, 4), surgery_blocks=3)
    assert len(patches) == 4 and patches[0].shape == (2, 64, 64)
    assert torch.allclose(patches[2].norm(dim=-1), torch.ones(2, 64), atol=1e-5)
    # the image embedding is CLIP's own (unaltered) image embedding
    ref = torch.nn.functional.normalize(tiny_clip.clip.encode_image(x), dim=-1)
    assert torch.allclose(emb, ref, atol=1e-5)


def test_paper_profile_never_falls_back_to_random_weights(monkeypatch):
    from aaclip.config import preset

    monkeypatch.delenv(bb.WEIGHTS_ENV, raising=False)
    assert preset("paper").backbone.require_weights
    with pytest.raises(bb.WeightsNotFoundError, match=r"aaclip-tiny\.pt.*AACLIP_WEIGHTS"):
        bb.create_backbone("aaclip-tiny", image_size=64, require_weights=True)


# ------------------------------------------------- bad weights files: one line (issue 8.4)


def _save_state(model, path):
    state = {k: v.contiguous() for k, v in model.clip.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def test_wrong_architecture_names_the_first_mismatching_tensor(tmp_path):
    other = bb.create_backbone("aaclip-tiny-8", image_size=64)
    path = _save_state(other, tmp_path / "tiny8.pt")
    with pytest.raises(bb.WeightsFileError) as err:
        bb.create_backbone("aaclip-tiny", weights=path, image_size=64)
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400
    assert msg.startswith(f"{path}: does not fit aaclip-tiny")
    assert "positional_embedding is (77, 48) in the file, (77, 64) in aaclip-tiny" in msg
    assert "48 unexpected" in msg  # aaclip-tiny-8 has 8 vision blocks, aaclip-tiny 4: counted


def test_wrong_width_positional_embedding_is_refused_not_resized(tmp_path, tiny_clip):
    state = {k: v.clone() for k, v in tiny_clip.clip.state_dict().items()}
    state["visual.positional_embedding"] = torch.zeros(65, 32)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    with pytest.raises(bb.WeightsFileError, match=r"visual.positional_embedding is \(65, 32\)"):
        bb.create_backbone("aaclip-tiny", weights=path, image_size=96)


@pytest.mark.parametrize(
    ("name", "content", "kind"),
    [
        ("random.pt", bytes(range(256)) * 40, "a binary file, not weights"),
        ("notes.pth", b"these are not weights\n", "a text file, not weights"),
        ("fake.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}", "not a safet"),
        ("empty.bin", b"", "an empty file"),
    ],
)
def test_a_file_that_is_not_weights_is_one_line_naming_it(tmp_path, name, content, kind):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(bb.WeightsFileError) as err:
        bb.create_backbone("aaclip-tiny", weights=path, image_size=64)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: does not fit aaclip-tiny: it is {kind}")


def test_adapter_files_given_as_weights_say_what_they_are(tmp_path):
    released = tmp_path / "image_adapter_15.pth"
    torch.save({"epoch": 15, "image_adapter": {"a.weight": torch.zeros(2, 2)}}, released)
    resume = tmp_path / "resume.pt"
    torch.save({"stage": 2, "epoch": 3, "optimizer": {"state": {}, "param_groups": []}}, resume)
    for path, what in (
        (released, "the authors' released AA-CLIP image adapter (image_adapter_N.pth, epoch 15)"),
        (resume, "a run's training state (resume.pt of stage 2, epoch 3"),
    ):
        with pytest.raises(bb.WeightsFileError, match=r"does not fit aaclip-tiny: it is") as err:
            bb.create_backbone("aaclip-tiny", weights=path, image_size=64)
        assert what in str(err.value)


def test_not_weights_cli_exit_2_one_line(tmp_path):
    path = tmp_path / "ViT-L-14-336.pt"
    path.write_text("<html>404 Not Found</html>\n")  # a failed download
    proc = subprocess.run(
        [sys.executable, "-m", "aaclip.cli", "bench", "--backbone", "aaclip-tiny"]
        + ["--image-size", "64", "--weights", str(path), "--no-metrics", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "a text file, not weights" in proc.stderr


# ----------------------------------- $AACLIP_WEIGHTS and the tiny backbones (issue 8.6)


def test_env_weights_never_reach_the_tiny_smoke_backbones(tmp_path, monkeypatch):
    big = _save_state(bb.create_backbone("aaclip-tiny-8", image_size=64), tmp_path / "real.pt")
    monkeypatch.setenv(bb.WEIGHTS_ENV, str(big))
    with pytest.warns(bb.WeightsIgnoredWarning, match="AACLIP_WEIGHTS ignored for aaclip-tiny"):
        model = bb.create_backbone("aaclip-tiny", image_size=64)
    assert model.identity["weights"] == "random-init-seed0"
    # the same variable still applies to a backbone it fits ...
    monkeypatch.setenv(bb.WEIGHTS_ENV, str(tmp_path / "absent.pt"))
    with pytest.raises(bb.WeightsNotFoundError, match="absent.pt"):
        bb.create_backbone("ViT-B-32")
    # ... and an explicit file of the wrong architecture is still refused
    with pytest.raises(bb.WeightsFileError, match="does not fit aaclip-tiny"):
        bb.create_backbone("aaclip-tiny", weights=big, image_size=64)


def test_env_weights_do_not_break_the_smoke_profile_cli(tmp_path, synthetic_root):
    import os

    junk = tmp_path / "ViT-L-14-336.pt"
    junk.write_bytes(b"not these")
    env = {**os.environ, bb.WEIGHTS_ENV: str(junk)}
    proc = subprocess.run(
        [sys.executable, "-m", "aaclip.cli", "bench", "--backbone", "aaclip-tiny"]
        + ["--image-size", "64", "--batch-size", "2", "--steps", "1", "--no-metrics"]
        + ["--no-train", "--device", "cpu", "--out", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "AACLIP_WEIGHTS ignored for aaclip-tiny" in proc.stderr
