"""The command line: prepare passes options through, --version, one-line device errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from aaclip import __version__, devices
from aaclip.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"aaclip {__version__}"


@pytest.mark.parametrize(
    ("name", "options"),
    [("colon", ["--root", "--name", "--class-name"]), ("synthetic", ["--seed", "--montage"])],
)
def test_prepare_name_help_shows_the_converters_options(capsys, name, options):
    with pytest.raises(SystemExit) as done:
        main(["prepare", name, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert all(opt in out for opt in options), out


def test_prepare_passes_options_without_touching_sys_argv(tmp_path, capsys, monkeypatch):
    root = tmp_path / "polyps"
    for i in range(2):
        for folder, mode in (("images", "RGB"), ("masks", "L")):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.new(mode, (4, 4)).save(root / folder / f"{i}.png")
    monkeypatch.setattr(sys, "argv", ["sentinel"])
    assert main(["prepare", "colon", "--root", str(root), "--name", "Kvasir"]) == 0
    assert sys.argv == ["sentinel"]
    assert f"-> {tmp_path / 'Colon_Kvasir' / 'test.jsonl'}" in capsys.readouterr().out


def test_every_converter_main_takes_argv():
    import importlib
    import inspect

    from aaclip.cli import CONVERTERS

    for name in CONVERTERS:
        params = inspect.signature(importlib.import_module(f"data_prep.{name}").main).parameters
        assert next(iter(params)) == "argv", name


@pytest.mark.parametrize(
    ("device", "fragment"),
    [("cuda", "PyTorch sees no CUDA GPU"), ("gpu", "unknown device"), ("cuda:x", "unknown")],
)
def test_bad_device_is_one_line_exit_2(tmp_path: Path, capsys, monkeypatch, device, fragment):
    monkeypatch.setattr(devices, "_gpu_count", lambda: 0)
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    argv = ["predict", "--checkpoint", str(tmp_path / "c.safetensors"), "--description", "x"]
    assert main([*argv, "--device", device, str(image)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and fragment in err
    assert err.startswith(
        f"aaclip: error: --device {device!r}"
        if "unknown" in fragment
        else "aaclip: error: --device cuda"
    )
