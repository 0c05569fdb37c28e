"""Methods registered by name; each wraps a shared, frozen open_clip backbone.

Adding a method is one module (its Config, PRESETS and the Method subclass), one entry here
and its own tests; the contract tests in tests/methods/ cover it automatically.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from aaclip.methods.aaclip import AAClip
from aaclip.methods.base import ClassContext, InputSpec, Method, Prediction, Stage
from aaclip.methods.clip import ClipBaseline
from aaclip.methods.clipmpcad import ClipMPCAD
from aaclip.methods.dpclip import DPClip
from aaclip.methods.iqeclip import IQEClip
from aaclip.methods.mvfa import MVFA

if TYPE_CHECKING:
    from aaclip.backbone import Backbone
    from aaclip.config import ExperimentConfig

METHODS: dict[str, type[Method]] = {
    "clip": ClipBaseline,
    "aaclip": AAClip,
    "dpclip": DPClip,
    "mvfa": MVFA,
    "clipmpcad": ClipMPCAD,
    "iqeclip": IQEClip,
}


class UnknownMethodError(ValueError):
    """A method name that is not registered."""


def list_methods() -> list[str]:
    """Registered method names, in registration order."""
    return list(METHODS)


def method_class(name: str) -> type[Method]:
    """The Method subclass registered under `name`; an unknown name lists the known ones."""
    if name not in METHODS:
        raise UnknownMethodError(
            f"unknown method {name!r}; registered: {', '.join(METHODS)} (see `aaclip methods`)"
        )
    return METHODS[name]


def config_class(name: str) -> type:
    """The `model` config dataclass of a method."""
    return method_class(name).Config


def create_method(
    cfg: ExperimentConfig, device: torch.device | str = "cpu", backbone: Backbone | None = None
) -> Method:
    """A fresh method with its trainable state drawn from `train.seed`, on a new or a shared
    backbone (the backbone's own random init never depends on the global stream)."""
    from aaclip.backbone import build_backbone
    from aaclip.runtime import default_dtype, seed_everything

    cls = method_class(cfg.method)
    seed_everything(cfg.train.seed)
    backbone = backbone or build_backbone(cfg.backbone, device)
    with default_dtype(backbone.dtype):  # fp64: the adapters' init is portable too
        method = cls(backbone, cfg.model)
    method = method.to(device=device, dtype=backbone.dtype)
    method.precision = cfg.backbone.precision
    return method.eval()


__all__ = [
    "METHODS",
    "AAClip",
    "ClassContext",
    "ClipBaseline",
    "ClipMPCAD",
    "InputSpec",
    "MVFA",
    "Method",
    "Prediction",
    "Stage",
    "UnknownMethodError",
    "config_class",
    "create_method",
    "list_methods",
    "method_class",
]
