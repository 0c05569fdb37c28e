"""Prompt ensembles and the per-dataset class descriptions (data in class_descriptions.json)."""

from __future__ import annotations

import json
import warnings
from functools import cache
from pathlib import Path

NORMAL_STATES = ("{}", "a {}", "the {}")
ABNORMAL_STATES = (
    "a damaged {}",
    "a broken {}",
    "a {} with flaw",
    "a {} with defect",
    "a {} with damage",
)
TEMPLATES = ("{}.", "a photo of {}.")
DOMAINS = ("industrial", "medical")
_TABLE = Path(__file__).with_name("class_descriptions.json")


@cache
def _table() -> dict:
    return json.loads(_TABLE.read_text())["datasets"]


def known_datasets() -> list[str]:
    """Datasets that have an official description table."""
    return list(_table())


def prompt_sentences(description: str) -> tuple[list[str], list[str]]:
    """All state x template sentences for the normal and the abnormal group."""

    def expand(states: tuple[str, ...]) -> list[str]:
        return [t.format(s.format(description)) for s in states for t in TEMPLATES]

    return expand(NORMAL_STATES), expand(ABNORMAL_STATES)


def plain_name(class_name: str) -> str:
    """The folder name as a phrase (underscores read as spaces)."""
    return class_name.replace("_", " ")


def describe(class_name: str, dataset: str | None = None, mode: str = "official") -> str:
    """The text that fills the prompts for a class.

    `official`: the released per-dataset description table (target-specific prompt
    engineering); a class missing from it falls back to its folder name with a warning.
    `plain`: always the folder name.
    """
    if mode == "plain":
        return plain_name(class_name)
    if mode != "official":
        raise ValueError(f"class_descriptions must be 'official' or 'plain', got {mode!r}")
    table = _table().get(dataset or "", {}).get("descriptions", {})
    if class_name not in table:
        warnings.warn(
            f"class {class_name!r} of dataset {dataset!r} has no official description; "
            f"using its folder name {plain_name(class_name)!r}",
            stacklevel=2,
        )
        return plain_name(class_name)
    return table[class_name]


def domain_of(dataset: str | None, default: str = "industrial") -> str:
    """Scoring domain of a dataset ('industrial' or 'medical'); `default` when unknown."""
    if default not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {default!r}")
    return _table().get(dataset or "", {}).get("domain", default)
