"""Prompt ensembles as data: the MVFA set and the loader's checks."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from aaclip.prompt_sets import (
    PromptSetError,
    load_prompt_set,
    prompt_set_names,
    read_prompt_set,
)

REPO = Path(__file__).resolve().parents[1]


def test_mvfa_set_as_the_spec_lists_it() -> None:
    s = load_prompt_set("mvfa")
    assert "mvfa" in prompt_set_names() and s.name == "mvfa"
    assert s.normal_states == (
        "{}",
        "flawless {}",
        "perfect {}",
        "unblemished {}",
        "{} without flaw",
        "{} without defect",
        "{} without damage",
    )
    assert s.abnormal_states == (
        "damaged {}",
        "broken {}",
        "{} with flaw",
        "{} with defect",
        "{} with damage",
    )
    assert len(s.templates) == len(set(s.templates)) == 35
    assert (
        s.templates[0] == "a bad photo of a {}."
        and s.templates[-1] == "this is one {} in the scene."
    )
    names = {
        "Brain": "Brain",
        "Liver": "Liver",
        "Retina_RESC": "retinal OCT",
        "Retina_OCT2017": "retinal OCT",
        "Chest": "Chest X-ray film",
        "Histopathology": "histopathological image",
    }
    assert {k: s.class_name(k) for k in names} == names and s.class_name("Other") == "Other"


def test_sentences_are_state_major() -> None:
    s = load_prompt_set("mvfa")
    normal, abnormal = s.sentences("Liver")
    assert len(normal) == 245 and len(abnormal) == 175
    assert (
        normal[0] == "a bad photo of a Liver." and normal[35] == "a bad photo of a flawless Liver."
    )
    assert abnormal[-1] == "this is one Liver with damage in the scene."


def test_bad_files_are_one_line_naming_the_file(tmp_path: Path) -> None:
    good = json.loads((REPO / "aaclip/prompt_sets/mvfa.json").read_text())
    cases = {
        "broken.json": "{not json",
        "slots.json": json.dumps({**good, "templates": ["a photo of {} {}."]}),
        "empty.json": json.dumps({**good, "abnormal_states": []}),
        "names.json": json.dumps({**good, "class_names": ["Brain"]}),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(PromptSetError) as exc:
            read_prompt_set(tmp_path / name)
        assert str(exc.value).startswith(str(tmp_path / name)) and "\n" not in str(exc.value)
    with pytest.raises(PromptSetError, match="known: .*mvfa"):
        load_prompt_set("nope")


def test_prompt_sets_are_package_data() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "prompt_sets/*.json" in config["tool"]["setuptools"]["package-data"]["aaclip"]
