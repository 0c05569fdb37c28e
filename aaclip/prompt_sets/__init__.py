"""Prompt ensembles as data: ``aaclip/prompt_sets/<name>.json``.

A set holds normal and abnormal *states* (``"flawless {}"``), *templates*
(``"a bad photo of a {}."``) and optional prompt *class names* per folder name. Each state
is filled with the class name and put into every template: state-major, template-minor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

FOLDER = Path(__file__).parent
LISTS = ("normal_states", "abnormal_states", "templates")


class PromptSetError(ValueError):
    """A prompt-set file that cannot be used; the message is one line naming the file."""


@dataclass(frozen=True)
class PromptSet:
    """States x templates of one prompt ensemble, and prompt class names per folder name."""

    name: str
    normal_states: tuple[str, ...]
    abnormal_states: tuple[str, ...]
    templates: tuple[str, ...]
    class_names: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def class_name(self, folder: str) -> str:
        """The name that fills the prompts for a folder/object name (itself if not listed)."""
        return self.class_names.get(folder, folder)

    def sentences(self, class_name: str) -> tuple[list[str], list[str]]:
        """(normal, abnormal) sentences for ``class_name``, in the released order."""

        def expand(states: tuple[str, ...]) -> list[str]:
            return [t.format(s.format(class_name)) for s in states for t in self.templates]

        return expand(self.normal_states), expand(self.abnormal_states)


def prompt_set_names() -> list[str]:
    """Names of the bundled prompt sets."""
    return sorted(p.stem for p in FOLDER.glob("*.json"))


def _strings(path: Path, data: dict, key: str) -> tuple[str, ...]:
    items = data.get(key)
    if not isinstance(items, list) or not items or not all(isinstance(s, str) for s in items):
        raise PromptSetError(f"{path}: '{key}' must be a non-empty list of strings")
    for s in items:
        if s.count("{}") != 1 or s.replace("{}", "").count("{") or s.count("}") != 1:
            raise PromptSetError(f"{path}: '{key}' entry {s!r} needs exactly one '{{}}' slot")
    return tuple(items)


def read_prompt_set(path: str | Path) -> PromptSet:
    """Load and check a prompt-set JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PromptSetError(f"{path}: no such prompt-set file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        message = " ".join(str(exc).split())
        raise PromptSetError(f"{path}: cannot read the prompt set ({message})") from None
    if not isinstance(data, dict):
        raise PromptSetError(f"{path}: expected a JSON object")
    names = data.get("class_names", {})
    if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
        raise PromptSetError(f"{path}: 'class_names' must map folder names to strings")
    lists = {key: _strings(path, data, key) for key in LISTS}
    return PromptSet(str(data.get("name", path.stem)), class_names=dict(names), **lists)


@cache
def load_prompt_set(name: str) -> PromptSet:
    """A bundled prompt set by name (e.g. ``"mvfa"``); an unknown name lists the known ones."""
    path = FOLDER / f"{name}.json"
    if not path.is_file():
        known = ", ".join(prompt_set_names())
        raise PromptSetError(f"{path}: unknown prompt set {name!r} (known: {known})")
    return read_prompt_set(path)
