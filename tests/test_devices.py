"""--device strings: a usable torch.device, or one line saying what to pass instead."""

from __future__ import annotations

import pytest
import torch

from aaclip import devices
from aaclip.devices import DeviceError, parse_device


def test_default_is_cuda_when_present_else_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert parse_device(None) == torch.device("cpu")
    assert parse_device("") == torch.device("cpu")
    assert parse_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert parse_device(None) == torch.device("cuda")


def test_cpu_is_always_fine():
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device(" CPU ") == torch.device("cpu")


def test_cuda_without_gpu_is_one_line(monkeypatch):
    monkeypatch.setattr(devices, "_gpu_count", lambda: 0)
    with pytest.raises(DeviceError) as err:
        parse_device("cuda")
    msg = str(err.value)
    assert "\n" not in msg and "no CUDA GPU" in msg and "--device cpu" in msg
    assert isinstance(err.value, ValueError)


def test_cuda_index_beyond_the_gpus(monkeypatch):
    monkeypatch.setattr(devices, "_gpu_count", lambda: 2)
    assert parse_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DeviceError, match=r"has 2 CUDA GPUs \(cuda:0 to cuda:1\)"):
        parse_device("cuda:2")
    monkeypatch.setattr(devices, "_gpu_count", lambda: 1)
    with pytest.raises(DeviceError, match=r"has 1 CUDA GPU \(only cuda:0\)"):
        parse_device("cuda:1")


@pytest.mark.parametrize("text", ["gpu", "cuda:x", "cuda:-1", "Cuda0", "tpu", "meta", "1"])
def test_unknown_device_strings_are_one_line(text):
    with pytest.raises(DeviceError) as err:
        parse_device(text)
    msg = str(err.value)
    assert "\n" not in msg and repr(text) in msg and "use cpu, cuda, cuda:N or mps" in msg


def test_mps_only_where_it_exists(monkeypatch):
    monkeypatch.setattr(devices, "_mps_available", lambda: False)
    with pytest.raises(DeviceError, match="MPS is not available"):
        parse_device("mps")
