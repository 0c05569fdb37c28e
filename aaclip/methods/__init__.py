"""Methods registered by name: each wraps a frozen open_clip backbone."""

from aaclip.methods.aaclip import AAClip
from aaclip.methods.clip import ClipBaseline

METHODS = {"aaclip": AAClip, "clip": ClipBaseline}


def get_method(name: str):
    """The method class registered under `name`."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {sorted(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "AAClip", "ClipBaseline", "get_method"]
