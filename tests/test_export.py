"""Exports: contents and manifest, ONNX parity, predict --model == predict from the checkpoint,
refusals (other package version, tampered or missing file, per-image text, wrong backbone)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aaclip import deploy, export
from aaclip.cli import main

SIZE = 64
CLASS = "grass"


def _checkpoint(folder: Path, method: str = "aaclip") -> Path:
    from aaclip import checkpoints as ck
    from aaclip.config import apply_overrides, preset
    from aaclip.methods import create_method

    cfg = apply_overrides(preset("smoke", method), [f"backbone.image_size={SIZE}"])
    model = create_method(cfg, "cpu")
    torch.manual_seed(3)  # trained-looking adapters: not the init of the seed
    for p in model.adapters.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    meta = {"method": model.name, "stage": 2, "epoch": 1, "config": cfg.to_dict()}
    meta["backbone"] = model.backbone.identity
    path = folder / "model.safetensors"
    ck.save_adapters(path, model.adapter_state(), meta)
    return path


def _images(folder: Path, n: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        paths.append(folder / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (48, 72, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def _calibrate(checkpoint: Path, normals: list[Path]) -> None:
    """`<checkpoint>.calibration.json` made by the calibrate verb's code on `normals` (other
    images than the ones predicted)."""
    from aaclip.calibrate import calibrate_checkpoint

    folder = normals[0].parent
    calibrate_checkpoint(checkpoint, folder, description=CLASS, fpr=0.25, device="cpu")


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """A calibrated checkpoint, its ONNX export through the CLI, and images to predict."""
    root = tmp_path_factory.mktemp("export")
    ckpt = _checkpoint(root)
    _calibrate(ckpt, _images(root / "normals", 6, seed=10))
    images = _images(root / "photos", 3, seed=0)
    out = root / "exported"
    argv = ["export", "--checkpoint", str(ckpt), "--class-name", CLASS, "--out", str(out)]
    if export.onnx_available():
        argv.append("--onnx")
    assert main(argv) == 0
    return {"root": root, "checkpoint": ckpt, "export": out, "images": images}


def _copy(made: dict, tmp_path: Path) -> Path:
    return Path(shutil.copytree(made["export"], tmp_path / "copy"))


def _rows(csv_path: Path) -> list[dict]:
    with open(csv_path) as f:
        return list(csv.DictReader(f))


def test_export_folder_holds_what_inference_needs(made) -> None:
    folder = made["export"]
    manifest = json.loads((folder / "manifest.json").read_text())
    names = {p.name for p in folder.iterdir()} - {"manifest.json"}
    assert {"adapter.safetensors", "anchors.safetensors", "backbone.safetensors"} <= names
    assert "calibration.json" in names
    assert set(manifest["files"]) == names  # every other file, by sha256
    for name, digest in manifest["files"].items():
        assert export._sha256(folder / name) == digest
    assert manifest["method"] == "aaclip" and manifest["class_name"] == CLASS
    assert manifest["domain"] == "industrial" and manifest["scoring"]["rule"] == "industrial"
    assert manifest["versions"]["aaclip"] == __import__("aaclip").__version__
    assert manifest["config"]["backbone"]["name"] == "aaclip-tiny"
    assert manifest["input_spec"]["image_size"] == SIZE
    assert manifest["backbone"]["mode"] == "embed"
    assert manifest["created"] and manifest["checkpoint"]["name"] == "model.safetensors"
    assert deploy.verify(folder) == manifest


def test_exported_detector_is_the_method_with_baked_anchors(made) -> None:
    """PyTorch runtime of the export == the checkpoint's method with the class's own text."""
    from aaclip.config import ExperimentConfig
    from aaclip.evaluate import load_methods

    manifest = deploy.verify(made["export"])
    cfg = ExperimentConfig.from_dict(manifest["config"])
    assert cfg.backbone.precision == "fp32"  # exports are float32, the smoke run fp64
    method = next(iter(load_methods(cfg, [made["checkpoint"]], torch.device("cpu")).values()))
    ctx = method.prepare_class(CLASS, None, "industrial", description=CLASS)
    detector = deploy.load_torch(made["export"])
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = method.predict(x, ctx)
    ref_maps, ref_scores = method.score_rule(ref, ctx)  # the method's per-image rule
    assert not torch.equal(ref_scores, ref.scores)  # AA-CLIP: 0.5 max(map) + 0.5 p, not p
    got = detector.predict(x)
    # the baked anchors were computed in float64 and rounded; the reference in float32
    torch.testing.assert_close(detector.anchors, ctx.text, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.maps, ref_maps, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.scores, ref_scores, rtol=1e-4, atol=1e-5)


def test_onnx_matches_pytorch_with_a_dynamic_batch(made) -> None:
    pytest.importorskip("onnxruntime")
    if not export.onnx_available():
        pytest.skip("onnx/onnxscript not installed: no ONNX export")
    detector = deploy.load_torch(made["export"])
    onnx = deploy.OnnxDetector(made["export"], threads=1)
    g = torch.Generator().manual_seed(1)
    for batch in (1, 2, 5):
        x = torch.randn(batch, 3, SIZE, SIZE, generator=g)
        ref = detector.predict(x)
        maps, scores = onnx.run(x.numpy())
        assert maps.shape == (batch, SIZE, SIZE) and scores.shape == (batch,)
        assert np.abs(maps - ref.maps.numpy()).max() <= 1e-4
        assert np.abs(scores - ref.scores.numpy()).max() <= 1e-4


def test_predict_model_equals_predict_from_the_checkpoint(made, capsys) -> None:
    """Same CSV and overlays; the calibrated labels and masks of the export's calibration."""
    from aaclip.predict import predict_files

    root = made["root"]  # the checkpoint's calibration is read from beside it
    ref = predict_files(made["checkpoint"], made["images"], CLASS, root / "p_ckpt", device="cpu")
    ref_rows = _rows(ref)
    assert {r["label"] for r in ref_rows} <= {"normal", "anomalous"}
    runtimes = ["torch"] + (["onnx"] if export.onnx_available() else [])
    for runtime in runtimes:
        out = root / f"p_{runtime}"
        argv = ["predict", "--model", str(made["export"]), "--runtime", runtime]
        assert main([*argv, "--out", str(out), *map(str, made["images"])]) == 0
        rows = _rows(out / "scores.csv")
        assert [r["image"] for r in rows] == [r["image"] for r in ref_rows]
        assert [r["label"] for r in rows] == [r["label"] for r in ref_rows]
        for r, s in zip(rows, ref_rows, strict=True):
            for key in ("raw_score", "score"):
                if runtime == "torch":
                    assert r[key] == s[key]
                else:
                    assert abs(float(r[key]) - float(s[key])) <= 1e-4
            mask = np.asarray(Image.open(out / r["mask"]))
            ref_mask = np.asarray(Image.open(root / "p_ckpt" / s["mask"]))
            same = (mask == ref_mask).mean()
            assert same == 1.0 if runtime == "torch" else same > 0.999
    assert "wrote" in capsys.readouterr().out


def test_reference_backbone_is_rebuilt_and_checked(made, tmp_path: Path, capsys) -> None:
    from safetensors.torch import save_file

    from aaclip.backbone import create_backbone

    out = tmp_path / "ref"
    argv = ["export", "--checkpoint", str(made["checkpoint"]), "--class-name", CLASS]
    assert main([*argv, "--out", str(out), "--backbone", "reference"]) == 0
    assert not (out / "backbone.safetensors").exists()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    a = deploy.load_torch(out).predict(x)
    b = deploy.load_torch(made["export"]).predict(x)
    assert torch.equal(a.maps, b.maps) and torch.equal(a.scores, b.scores)
    other = create_backbone("aaclip-tiny", image_size=SIZE, init_seed=5).clip.state_dict()
    save_file({k: v.contiguous() for k, v in other.items()}, str(tmp_path / "other.safetensors"))
    capsys.readouterr()
    argv = ["predict", "--model", str(out), "--weights", str(tmp_path / "other.safetensors")]
    assert main([*argv, "--out", str(tmp_path / "p"), str(made["images"][0])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "made for another backbone" in err and "weights" in err


def _predict_err(folder: Path, made: dict, tmp_path: Path, capsys) -> str:
    capsys.readouterr()
    argv = ["predict", "--model", str(folder), "--out", str(tmp_path / "p")]
    assert main([*argv, str(made["images"][0])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("aaclip: error: ")
    return err


def test_tampered_or_missing_file_is_refused_by_name(made, tmp_path: Path, capsys) -> None:
    folder = _copy(made, tmp_path)
    anchors = folder / "anchors.safetensors"
    blob = bytearray(anchors.read_bytes())
    blob[-1] ^= 1
    anchors.write_bytes(bytes(blob))
    err = _predict_err(folder, made, tmp_path, capsys)
    assert f"{anchors}: sha256 differs from the manifest" in err
    anchors.unlink()
    err = _predict_err(folder, made, tmp_path, capsys)
    assert f"{anchors}: missing" in err


def test_edited_manifest_is_refused(made, tmp_path: Path, capsys) -> None:
    folder = _copy(made, tmp_path)
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["domain"] = "medical"
    path.write_text(json.dumps(manifest))
    assert "manifest.json: edited after export" in _predict_err(folder, made, tmp_path, capsys)


def test_other_package_version_is_refused(made, tmp_path: Path, capsys) -> None:
    folder = _copy(made, tmp_path)
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["versions"]["aaclip"] = "0.0.1"
    manifest["manifest_sha256"] = export.manifest_digest(manifest)
    path.write_text(json.dumps(manifest))
    err = _predict_err(folder, made, tmp_path, capsys)
    assert f"{folder}: exported by aaclip 0.0.1, this is aaclip " in err


def test_export_without_calibration_warns_in_one_line(tmp_path: Path, capsys) -> None:
    ckpt = _checkpoint(tmp_path)
    capsys.readouterr()
    argv = ["export", "--checkpoint", str(ckpt), "--class-name", CLASS]
    assert main([*argv, "--out", str(tmp_path / "e"), "--backbone", "reference"]) == 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no calibration" in err and "labels" in err
    manifest = deploy.verify(tmp_path / "e")
    assert manifest["calibration"] is None
    out = tmp_path / "p"
    images = _images(tmp_path / "imgs", 2, seed=4)
    argv_p = ["predict", "--model", str(tmp_path / "e"), "--out", str(out)]
    assert main([*argv_p, *map(str, images)]) == 0
    assert _rows(out / "scores.csv")[0]["label"] == ""  # raw scores only, no label
    # an existing, non-empty --out is refused, nothing written
    assert main([*argv, "--out", str(tmp_path / "e")]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_per_image_text_method_is_refused(tiny_clip) -> None:
    from aaclip.methods import ClipBaseline

    class PerImage(ClipBaseline):
        name = "per-image"

        def class_anchors(self, class_name, dataset, description=None):
            return None

    with pytest.raises(export.ExportError, match="computes its text from each image") as err:
        export.detector_for(PerImage(tiny_clip), CLASS)
    assert "\n" not in str(err.value)


def test_predict_options_are_checked(made, tmp_path: Path, capsys) -> None:
    image = str(made["images"][0])
    for argv, fragment in (
        (["--model", str(made["export"]), "--description", "x"], "fixed"),
        (["--checkpoint", str(made["checkpoint"]), "--runtime", "torch"], "applies to --model"),
        (["--model", str(tmp_path / "none")], "no such export folder"),
        (["--model", str(tmp_path)], "not an aaclip export"),
    ):
        capsys.readouterr()
        assert main(["predict", *argv, "--out", str(tmp_path / "p"), image]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fragment in err


@pytest.mark.slow
def test_clip_baseline_exports_to_onnx(tiny_clip, tmp_path: Path) -> None:
    """open_clip's forward_intermediates path (the CLIP baseline) traces too."""
    pytest.importorskip("onnxruntime")
    if not export.onnx_available():
        pytest.skip("onnx/onnxscript not installed: no ONNX export")
    from aaclip.methods import ClipBaseline

    method = ClipBaseline(tiny_clip).eval()
    detector = export.detector_for(method, CLASS, "medical", description=CLASS)
    export.export_onnx(detector, tmp_path / "m.onnx", SIZE)
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    ref = detector.predict(x)
    maps, scores = session.run(None, {"images": x.numpy()})
    assert np.abs(maps - ref.maps.numpy()).max() <= 1e-4
    assert np.abs(scores - ref.scores.numpy()).max() <= 1e-4


def test_readme_onnxruntime_example_runs_without_aaclip(made, tmp_path: Path) -> None:
    """The README's onnxruntime-only example: same raw scores and labels as predict --model."""
    import re
    import subprocess
    import sys

    pytest.importorskip("onnxruntime")
    if not export.onnx_available():
        pytest.skip("onnx/onnxscript not installed: no ONNX export")
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Deploying a trained detector", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.splitlines()) <= 50 and "aaclip" not in code and "torch" not in code
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run(
        [sys.executable, "-I", str(script), str(made["export"]), *map(str, made["images"])],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout.splitlines()  # fmt: skip
    argv = ["predict", "--model", str(made["export"]), "--out", str(tmp_path / "p")]
    assert main([*argv, *map(str, made["images"])]) == 0
    rows = _rows(tmp_path / "p" / "scores.csv")
    assert len(out) == len(rows)
    for line, row in zip(out, rows, strict=True):
        assert line.startswith(f"{row['image']}: raw score ")
        assert f"raw score {float(row['raw_score']):.4f}" in line
        assert f", {row['label']}, " in line


def readme_recipe() -> dict:
    """The functions of the README's onnxruntime-only recipe (its script part not run)."""
    import re

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Deploying a trained detector", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {"__name__": "recipe"}
    exec(compile(code, "README recipe", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("kind", ["16-bit", "16-bit dark", "32-bit float", "grey", "rgba"])
def test_readme_recipe_reads_images_as_aaclip_does(tmp_path: Path, kind: str) -> None:
    """16-bit PNGs were read as saturated white by the recipe (0.466 normal vs aaclip's
    0.540 anomalous): its loader and preprocessing now equal aaclip's, bit for bit."""
    from aaclip import data
    from aaclip.transforms import CLIP_MEAN, CLIP_STD, image_to_tensor

    rng = np.random.default_rng(0)
    path = tmp_path / ("x.tif" if kind == "32-bit float" else "x.png")
    if kind.startswith("16-bit"):
        top = 4000 if kind == "16-bit dark" else 65535
        Image.fromarray(rng.integers(0, top, (30, 40), dtype=np.uint16)).save(path)
        assert Image.open(path).mode.startswith("I;16")
    elif kind == "32-bit float":
        Image.fromarray(rng.random((30, 40), dtype=np.float32)).save(path)
    elif kind == "grey":
        Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8)).save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (30, 40, 4), dtype=np.uint8), "RGBA").save(path)
    recipe = readme_recipe()
    ours = np.asarray(data.load_image(path))
    assert np.array_equal(np.asarray(recipe["load_rgb"](path)), ours)
    spec = {"image_size": SIZE, "mean": list(CLIP_MEAN), "std": list(CLIP_STD)}
    expected = image_to_tensor(data.load_image(path), SIZE, CLIP_MEAN, CLIP_STD).numpy()
    assert np.abs(recipe["preprocess"](path, spec) - expected).max() <= 1e-6


def test_manifest_holds_no_absolute_path(made) -> None:
    """An export's manifest.json (and its calibration) names no path of the build machine."""
    import json
    import os

    def strings(x):
        if isinstance(x, dict):
            for v in x.values():
                yield from strings(v)
        elif isinstance(x, list):
            for v in x:
                yield from strings(v)
        elif isinstance(x, str):
            yield x

    for name in ("manifest.json", "calibration.json"):
        file = made["export"] / name
        if file.is_file():
            doc = json.loads(file.read_text())
            absolute = [s for s in strings(doc) if os.path.isabs(s)]
            assert not absolute, (name, absolute)
    assert str(made["root"]) not in (made["export"] / "manifest.json").read_text()


@pytest.mark.slow
def test_bench_has_an_onnxruntime_row(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    if not export.onnx_available():
        pytest.skip("onnx/onnxscript not installed: no ONNX export")
    from aaclip.bench import run_bench

    rows = run_bench(
        "aaclip-tiny", SIZE, 2, "cpu", "fp32", steps=1, out_dir=tmp_path, metrics=False,
        train=False, warmup=0, onnx=True,
    )  # fmt: skip
    assert [r["what"] for r in rows] == [
        "inference+scoring",
        "inference+scoring (onnxruntime cpu)",
    ]
    assert all(r["images_per_s"] > 0 for r in rows)


def test_without_the_onnx_packages_one_line_says_what_to_install(
    made, tmp_path: Path, capsys, monkeypatch
) -> None:
    """The core install has no onnx: export without --onnx works, --onnx is one line."""
    import sys

    monkeypatch.setattr(export, "onnx_available", lambda: False)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if absent
    capsys.readouterr()
    argv = ["export", "--checkpoint", str(made["checkpoint"]), "--class-name", CLASS]
    assert main([*argv, "--out", str(tmp_path / "e"), "--onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'aaclip[export]'" in err
    assert not (tmp_path / "e").exists()
    argv = ["predict", "--model", str(made["export"]), "--runtime", "onnx"]
    if deploy.read_manifest(made["export"]).get("onnx"):
        assert main([*argv, "--out", str(tmp_path / "p"), str(made["images"][0])]) == 2
        assert "onnxruntime is not installed" in capsys.readouterr().err


def test_iqeclip_is_refused_in_one_line() -> None:
    import warnings

    from aaclip.config import preset
    from aaclip.methods import METHODS, create_method

    if "iqeclip" not in METHODS:
        pytest.skip("IQE-CLIP not registered")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        method = create_method(preset("smoke", "iqeclip"), "cpu")
    with pytest.raises(export.ExportError, match="iqeclip computes its text from each image"):
        export.detector_for(method, "brain")
