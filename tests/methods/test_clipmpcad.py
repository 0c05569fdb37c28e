"""ClipMPCAD: the MADFF block against a direct, slow reading of the spec (seed-methods.md
section 5), both modes; prompt lists as data and their one-line errors; the few-shot-only
refusal. The contract tests cover the rest (tests/methods/test_method_contract.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aaclip.methods.clipmpcad import (
    BUNDLED_PROMPTS,
    MADFF,
    ClipMPCAD,
    ClipMPCADConfig,
    bundled_prompt_lists,
    read_prompt_list,
)
from aaclip.prompt_sets import PromptSetError

C, E, N = 32, 24, 10


def mlp(fc: torch.nn.Sequential, v: torch.Tensor) -> torch.Tensor:
    """Linear -> ReLU -> Linear on one vector, written out."""
    w0, w2 = fc[0].weight, fc[2].weight
    return w2 @ torch.clamp(w0 @ v, min=0)


def leaky(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v > 0, v, 0.01 * v)


def slow_madff(m: MADFF, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Spec steps 1-5 for ONE sequence x (N, C), loops over tokens and channels."""
    n, c = x.shape
    ch = m.channel_attention.fc
    w_c = torch.sigmoid(mlp(ch, x.mean(0)) + mlp(ch, x.max(0).values))
    ca = torch.stack([w_c * x[t] for t in range(n)])
    z = torch.stack([ca.mean(1), ca.max(1).values])  # (2, N)
    w, b = m.spatial_attention.conv.weight[0], m.spatial_attention.conv.bias[0]
    k = w.shape[-1]
    s = torch.empty(n)
    for t in range(n):  # zero-padded 1-D convolution along the tokens (cross-correlation)
        acc = b.clone()
        for j in range(k):
            u = t + j - k // 2
            if 0 <= u < n:
                acc = acc + w[0, j] * z[0, u] + w[1, j] * z[1, u]
        s[t] = torch.sigmoid(acc)
    sa = s[:, None] * ca
    # |2-D DFT| over (channels x tokens), written as two 1-D DFT matrices
    dft = lambda m_: torch.exp(  # noqa: E731
        -2j * torch.pi * torch.outer(torch.arange(m_), torch.arange(m_)).double() / m_
    )
    f = (dft(c) @ x.T.double().to(torch.complex128) @ dft(n)).abs().float()  # (C, N)
    w_f = torch.sigmoid(mlp(m.frequency_attention.fc, (f.mean(1) + f.max(1).values) / 2))
    fa = torch.stack([w_f * x[t] for t in range(n)])
    w1, w2 = m.fc1[0].weight, m.fc2[0].weight
    h = torch.stack(
        [
            0.4 * leaky(w1 @ x[t])
            + 0.2 * leaky(w1 @ ca[t])
            + 0.2 * leaky(w1 @ sa[t])
            + 0.2 * leaky(w1 @ fa[t])
            for t in range(n)
        ]
    )
    y = torch.stack(
        [0.3 * leaky(w2 @ h[t]) + 0.2 * ca[t] + 0.2 * sa[t] + 0.3 * fa[t] for t in range(n)]
    )
    return h, y


def block(mode: str) -> MADFF:
    torch.manual_seed(0)
    m = MADFF(C, E, mode=mode, reduction=4)
    with torch.no_grad():
        m.spatial_attention.conv.bias.fill_(0.3)
    return m.eval()


@torch.no_grad()
def test_sequence_mode_is_the_spec_per_image():
    m = block("sequence")
    x = torch.randn(3, N, C, generator=torch.Generator().manual_seed(1))
    h, y = m(x)
    assert h.shape == (3, N, E) and y.shape == (3, N, C)
    for b in range(3):
        hs, ys = slow_madff(m, x[b])
        torch.testing.assert_close(h[b], hs, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(y[b], ys, rtol=1e-4, atol=1e-5)
    # one image's output does not depend on the others (gates along its own tokens)
    h1, y1 = m(x[1:2])
    torch.testing.assert_close(y1[0], y[1], rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_tokenwise_is_the_released_batch_one_computation_at_any_batch():
    seq, tok = block("sequence"), block("tokenwise")
    x = torch.randn(3, N, C, generator=torch.Generator().manual_seed(2))
    h, y = tok(x)
    for b in range(3):
        # released: the gates get (N, 1, C), i.e. they pool / convolve / transform over the
        # batch axis of size 1 -> the spec's reading applied to each token alone
        hs, ys = zip(*(slow_madff(seq, x[b, t : t + 1]) for t in range(N)), strict=True)
        torch.testing.assert_close(h[b], torch.cat(hs), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(y[b], torch.cat(ys), rtol=1e-4, atol=1e-5)
        # the same, through the module: the sequence-first tensor of one image (N, 1, C)
        h_rel, y_rel = seq(x[b].unsqueeze(1))
        torch.testing.assert_close(h[b], h_rel[:, 0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(y[b], y_rel[:, 0], rtol=1e-5, atol=1e-6)
    # the spec's closed forms at batch 1: channel gate sigma(2 MLP(x_t)), centre taps only,
    # |FFT over the channels| of each token
    t = x[0]
    ca_w = tok.channel_attention(t.unsqueeze(1))[:, 0]
    torch.testing.assert_close(ca_w, torch.sigmoid(2 * tok.channel_attention.fc(t)))
    ca = ca_w * t
    w, b_ = tok.spatial_attention.conv.weight[0], tok.spatial_attention.conv.bias[0]
    s = torch.sigmoid(w[0, 3] * ca.mean(-1) + w[1, 3] * ca.amax(-1) + b_)
    torch.testing.assert_close(tok.spatial_attention(ca.unsqueeze(1))[:, 0, 0], s)
    f = torch.sigmoid(tok.frequency_attention.fc(torch.fft.fft(t, dim=-1).abs()))
    torch.testing.assert_close(tok.frequency_attention(t.unsqueeze(1))[:, 0], f)
    # and the two modes differ (tokens are mixed in sequence mode)
    assert (seq(x)[1] - y).abs().max() > 1e-3


def test_fft_runs_in_fp32_under_autocast(monkeypatch):
    m = block("sequence")
    seen = []
    real = torch.fft.fft2
    monkeypatch.setattr(torch.fft, "fft2", lambda t, *a, **k: seen.append(t.dtype) or real(t))
    x = torch.randn(2, N, C)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        h, y = m(x)
    assert seen == [torch.float32] and torch.isfinite(y.float()).all()
    assert h.dtype == torch.bfloat16  # the rest runs under autocast


def test_parameter_names_are_the_released_ones():
    names = {k: tuple(v.shape) for k, v in MADFF(1024, 768).state_dict().items()}
    assert names == {
        "fc1.0.weight": (768, 1024),
        "fc2.0.weight": (1024, 768),
        "channel_attention.fc.0.weight": (64, 1024),
        "channel_attention.fc.2.weight": (1024, 64),
        "spatial_attention.conv.weight": (1, 2, 7),
        "spatial_attention.conv.bias": (1,),
        "frequency_attention.fc.0.weight": (64, 1024),
        "frequency_attention.fc.2.weight": (1024, 64),
    }
    assert sum(v.numel() for v in MADFF(1024, 768).parameters()) == 1_835_023


# --------------------------------------------------------------------------- prompt lists
def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"normal": ["a {classname}."], ', r"bad\.json: not a valid JSON prompt list \("),
        ('{"normal": ["a {classname}."]}', r"bad\.json: 'abnormal' must be a non-empty list"),
        ("[1, 2]", r"bad\.json: expected a JSON object"),
        (
            '{"normal": ["a {classname}."], "abnormal": ["x {classname}", "a broken chest."]}',
            r"bad\.json: 'abnormal' entry 1 'a broken chest\.' has no \{classname\} slot",
        ),
        (
            '{"normal": ["a {classname}.", 3], "abnormal": ["x {classname}"]}',
            r"bad\.json: 'normal' entry 1 is not a string: 3",
        ),
    ],
)
def test_bad_prompt_files_are_one_line_naming_file_and_entry(tmp_path, text, message):
    path = write(tmp_path / "bad.json", text)
    err = pytest.raises(PromptSetError, read_prompt_list, path).value
    assert "\n" not in str(err)
    assert __import__("re").search(message, str(err)), str(err)


def test_missing_files_name_the_bundled_lists(tmp_path):
    err = str(pytest.raises(PromptSetError, read_prompt_list, "nope").value)
    assert "nope.json: no such prompt list file" in err and "medical_findings" in err
    with pytest.raises(PromptSetError, match="gone.json: no such prompt list file$"):
        read_prompt_list(str(tmp_path / "gone.json"))


def test_bundled_lists_are_valid_and_the_released_layout_reads(tmp_path):
    assert set(BUNDLED_PROMPTS) <= set(bundled_prompt_lists())
    for name in bundled_prompt_lists():
        lists = read_prompt_list(name)
        assert len(lists.normal) >= 5 and len(lists.abnormal) >= 5
    path = write(
        tmp_path / "released.json",
        json.dumps({"normal": {"prompts": ["{classname} ok"]}, "abnormal": {"prompts": ["b"]}}),
    )
    with pytest.raises(PromptSetError, match="'abnormal' entry 0 'b' has no"):
        read_prompt_list(path)


def test_extra_lists_are_appended_before_the_one_mean(tiny_clip, tmp_path):
    path = write(
        tmp_path / "p.json",
        json.dumps(
            {"normal": ["a calm {classname}."], "abnormal": ["x {classname}", "y {classname}"]}
        ),
    )
    plain = ClipMPCAD(tiny_clip, ClipMPCADConfig())
    extra = ClipMPCAD(tiny_clip, ClipMPCADConfig(extra_prompt_files=(path,)))
    n0, a0 = plain.prompt_sentences("retinal OCT")
    n1, a1 = extra.prompt_sentences("retinal OCT")
    assert (len(n0), len(a0)) == (245, 175)
    assert n1 == n0 + ["a calm retinal OCT."] and a1 == a0 + ["x retinal OCT", "y retinal OCT"]
    # one uniform mean over all 245 + n sentences, then L2
    t = extra.anchors_from_text("retinal OCT")
    f = tiny_clip.clip.encode_text(tiny_clip.tokenizer(a1))
    f = f / f.norm(dim=-1, keepdim=True)
    mean = f.mean(0)
    torch.testing.assert_close(t[:, 1], mean / mean.norm(), rtol=1e-4, atol=1e-5)
    with pytest.raises(PromptSetError, match="no such prompt list file"):
        ClipMPCAD(tiny_clip, ClipMPCADConfig(extra_prompt_files=("missing",)))


def test_few_shot_only_and_modes_checked(tiny_clip):
    with pytest.raises(ValueError, match="clipmpcad is few-shot only"):
        ClipMPCAD(tiny_clip, ClipMPCADConfig(protocol="zero_shot"))
    with pytest.raises(ValueError, match="madff_mode must be one of sequence, tokenwise"):
        ClipMPCAD(tiny_clip, ClipMPCADConfig(madff_mode="batch"))
