"""Facts about a method live on its class (issue 19, item 4): published name, the release's
checkpoint selection, released file kinds, ablation epochs and protocols; nothing outside
`aaclip/methods/` branches on a registered method's name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from aaclip.cli import build_parser, main
from aaclip.methods import METHODS, Method, list_methods, method_class

PACKAGE = Path(__file__).resolve().parents[1] / "aaclip"

# Literals that equal a registered name but are not the method: the package's own name as a
# metadata key (checkpoints, export versions) and the embedded MVFA sets' folder name.
NOT_A_METHOD = {
    ("checkpoints.py", 'if header is None or "aaclip" not in header[0]:'),
    ("checkpoints.py", 'meta = json.loads(header[0]["aaclip"])'),
    (
        "checkpoints.py",
        'atomic_write(path, save(tensors, metadata={"aaclip": json.dumps(meta, sort_keys=True)}))',
    ),
    (
        "export.py",
        'out = {"aaclip": __version__, "torch": torch.__version__, "open_clip": '
        "open_clip.__version__}",
    ),
    ("deploy.py", 'made = (manifest.get("versions") or {}).get("aaclip")'),
    ("medical.py", 'if (root / "Brain_AD" / "test.jsonl").is_file() or root.name != "mvfa":'),
}


def _names_in(node: ast.AST, names: set[str]) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [n for e in node.elts for n in _names_in(e, names)]
    return []


def name_branches(
    source: str, names: set[str], compare_only: bool = False
) -> list[tuple[int, str]]:
    """(line, text) of every comparison with a method name (`== "mvfa"`, `in ("dpclip",
    ...)`), and unless `compare_only` every dict key, subscript or `.get()` by a method name
    in `source`."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        hits: list[str] = []
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                hits += _names_in(operand, names)
        elif compare_only:
            pass
        elif isinstance(node, ast.Dict):
            for key in node.keys:
                if key is not None:
                    hits += _names_in(key, names)
        elif isinstance(node, ast.Subscript):
            hits += _names_in(node.slice, names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "pop", "setdefault")
            and node.args
        ):
            hits += _names_in(node.args[0], names)
        if isinstance(node, ast.match_case):
            hits += [c.value for c in ast.walk(node.pattern) if isinstance(c, ast.Constant)
                     and c.value in names]  # fmt: skip
        if hits:
            found.append((node.lineno, lines[node.lineno - 1].strip()))
    return found


def test_the_scan_finds_what_it_must():
    names = set(list_methods())
    code = (
        'if cfg.method == "mvfa":\n    pass\n'
        'ok = method in ("dpclip", "aaclip")\n'
        'NAMES = {"clip": "CLIP"}\n'
        'x = TABLE["iqeclip"]\n'
        'y = TABLE.get("clipmpcad", 1)\n'
        'z = preset("smoke", "aaclip")\n'  # a call with a name: not a branch
    )
    assert [n for n, _ in name_branches(code, names)] == [1, 3, 4, 5, 6]


def test_no_method_name_is_branched_on_outside_the_methods_package():
    names = set(list_methods())
    offenders = []
    for file in sorted(PACKAGE.rglob("*.py")):
        rel = file.relative_to(PACKAGE)
        if rel.parts[0] == "methods":
            continue
        for line, text in name_branches(file.read_text(), names):
            if (rel.as_posix(), text) not in NOT_A_METHOD:
                offenders.append(f"aaclip/{rel.as_posix()}:{line}: {text}")
    assert not offenders, "a fact about a method belongs on its class:\n" + "\n".join(offenders)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_states_its_facts(name):
    cls = method_class(name)
    assert cls.published_name, f"{name}: published_name"
    assert cls.release_selection != Method.release_selection, f"{name}: release_selection"
    assert all(isinstance(o, str) for o in cls.SMOKE_VARIANT_EPOCHS)
    assert set(cls.PROTOCOLS) <= {"zero_shot", "few_shot"}
    options = {a.dest for a in _subparser("import-released")._actions}
    assert set(cls.RELEASED_FILES) <= options, f"{name}: an option import-released lacks"


def test_analysis_and_results_read_the_class():
    from aaclip import results
    from aaclip.analysis import ablations
    from aaclip.analysis import methods as am
    from aaclip.config import preset

    for name, cls in METHODS.items():
        assert am.published_name(name) == results.published_name(name) == cls.published_name
        assert am.release_selection(name) == cls.release_selection
        smoke = ablations.ablation_config(preset("smoke", name))
        from aaclip.config import apply_overrides

        assert smoke == apply_overrides(preset("smoke", name), list(cls.SMOKE_VARIANT_EPOCHS))
    assert results.published_name("anomalyclip") == "anomalyclip"  # not registered: itself


def _subparser(name: str):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[name]


def test_import_released_without_an_importer_is_one_line(tmp_path, capsys):
    rc = main(["import-released", "--method", "clip", "--released", "x.pth",
               "--out", str(tmp_path / "x.safetensors")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == "aaclip: error: import-released: --method clip has no importer"
    rc = main(["import-released", "--method", "mvfa", "--text", "x.pth",
               "--out", str(tmp_path / "x.safetensors")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--released" in err


def test_protocol_help_names_its_default_method(capsys):
    with pytest.raises(SystemExit):
        main(["protocol", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default mvfa;" in out and "default aaclip" not in out


def test_protocol_with_a_mask_trained_method_is_one_line(synthetic_root, tmp_path, capsys):
    """`aaclip protocol --method aaclip` used to fail inside training with "pass
    require_masks=False"; now one line says why, before anything trains."""
    argv = ["protocol", "mvfa", "--method", "aaclip", "--shots", "0",
            "--data", str(synthetic_root / "mvfa"), "--out", str(tmp_path / "t"),
            "--runs", str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "AA-CLIP trains on anomaly masks" in err and "mvfa" in err
    assert not (tmp_path / "r" / "Brain_0shot").exists()


def test_no_notebook_branches_on_a_method_name():
    """The notebooks ask the method (`analysis.run_prefix`, `analysis.has_components`) instead
    of comparing the chosen method with a name (01–03 show AA-CLIP and CLIP by name: no
    choice is branched on there)."""
    import json

    names = set(list_methods())
    offenders = []
    for path in sorted((PACKAGE.parent / "notebooks").glob("0*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        for k, cell in enumerate(cells):
            source = "".join(cell["source"])
            if cell["cell_type"] != "code" or cell.get("metadata", {}).get("tags"):
                continue  # the parameters cell holds the default method
            lines = [line for line in source.splitlines() if not line.startswith(("%", "!"))]
            for line, text in name_branches("\n".join(lines), names, compare_only=True):
                offenders.append(f"{path.name} cell {k} line {line}: {text}")
    assert not offenders, "\n".join(offenders)


def test_component_ablation_is_the_methods():
    from aaclip.analysis import ablations
    from aaclip.config import preset

    for name, cls in METHODS.items():
        assert ablations.has_components(name) == bool(cls.COMPONENT_ABLATION)
        if cls.COMPONENT_ABLATION:
            rows = [row for row, *_ in ablations.component_jobs(preset("smoke", name))]
            assert rows == list(cls.COMPONENT_ABLATION)
    assert ablations.run_prefix("dpclip") == "dpclip-"
