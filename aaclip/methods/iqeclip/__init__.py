"""IQE-CLIP: the method (`method.py`) and its query module (`qformer.py`)."""

from aaclip.methods.iqeclip.method import (
    IQEClip,
    IQEClipConfig,
    IQEOutputs,
    gaussian_blur,
    load_released,
    mvfa_config,
)
from aaclip.methods.iqeclip.qformer import QueryModule

__all__ = [
    "IQEClip",
    "IQEClipConfig",
    "IQEOutputs",
    "QueryModule",
    "gaussian_blur",
    "load_released",
    "mvfa_config",
]
