"""`aaclip calibrate` and calibrated `predict`: scores of one image alone, labels, masks, API."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aaclip.cli import main

H, W = 40, 60  # the users' images: not square, not the model's size


def _photo(path: Path, seed: int, defect: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(100, 140, (H, W, 3), dtype=np.uint8)
    if defect:
        a[10:22, 20:38] = 255
    Image.fromarray(a).save(path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random checkpoint (64 px), 12 normal photos, 3 photos to score."""
    import torch

    from aaclip import checkpoints as ck
    from aaclip.config import apply_overrides, preset
    from aaclip.methods import create_method

    root = tmp_path_factory.mktemp("calib")
    torch.manual_seed(0)
    cfg = apply_overrides(preset("smoke"), ["backbone.image_size=64"])
    model = create_method(cfg, "cpu")
    meta = {"method": model.name, "stage": 2, "epoch": 1, "config": cfg.to_dict()}
    meta["backbone"] = model.backbone.identity
    ckpt = root / "model.safetensors"
    ck.save_adapters(ckpt, model.adapter_state(), meta)
    normals = [_photo(root / "normal" / f"{i:02d}.png", i) for i in range(12)]
    tests = [_photo(root / "test" / f"{k}.png", 100 + i, i > 0) for i, k in enumerate("abc")]
    return root, ckpt, normals, tests


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def calibrated(setup, tmp_path_factory):
    """The checkpoint copied and calibrated on the normals (class 'grass', FPR 0.1)."""
    import shutil

    root, ckpt, _, _ = setup
    copy = tmp_path_factory.mktemp("cal") / "model.safetensors"
    shutil.copy(ckpt, copy)
    argv = ["calibrate", "--checkpoint", str(copy), "--normal", str(root / "normal")]
    assert main([*argv, "--description", "grass", "--fpr", "0.1", "--device", "cpu"]) == 0
    return copy


def test_calibrate_stores_and_prints_what_it_stored(setup, calibrated, capsys):
    from aaclip.calibration import load_calibration

    root = setup[0]
    path = calibrated.with_name(calibrated.name + ".calibration.json")
    doc = json.loads(path.read_text())
    assert set(doc) >= {"checkpoint_sha256", "fpr", "classes", "created", "aaclip_version"}
    cal = load_calibration(calibrated)["grass"]
    assert cal.n_normal_images == 12 and cal.fpr == 0.1 and cal.image_fpr == 1 / 12
    assert cal.extra["description"] == "grass" and cal.extra["domain"] == "industrial"
    # a second run with anomalies adds the TPR and prints one row per class
    capsys.readouterr()
    argv = ["calibrate", "--checkpoint", str(calibrated), "--normal", str(root / "normal")]
    argv += ["--anomalous", str(root / "test"), "--description", "grass", "--fpr", "0.1"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    head = "calibrated model.safetensors at FPR 0.1 on zero-shot raw scores (15 images"
    assert out[0].startswith(head)
    assert out[1].split() == [
        "class", "normals", "image", "threshold", "pixel", "threshold", "image", "FPR",
        "pixel", "FPR", "anomalous", "image", "TPR", "pixel", "TPR",
    ]  # fmt: skip
    c = load_calibration(calibrated)["grass"]
    assert out[2].split() == [
        "grass", "12", f"{c.image_threshold:.6g}", f"{c.pixel_threshold:.6g}", "0.083",
        f"{c.pixel_fpr:.3f}", "3", f"{c.image_tpr:.3f}", "–",
    ]  # fmt: skip
    assert out[3] == f"stored {path}"
    assert (c.image_threshold, c.pixel_threshold) == (cal.image_threshold, cal.pixel_threshold)


def test_an_images_calibrated_score_does_not_depend_on_the_others(setup, calibrated, tmp_path):
    from aaclip.predict import predict_files

    _, _, _, tests = setup
    kw = dict(device="cpu", overlays=False)
    alone = _rows(predict_files(calibrated, [tests[1]], "grass", tmp_path / "one", **kw))
    every = _rows(predict_files(calibrated, tests, "grass", tmp_path / "all", **kw))
    pick = {k: v for k, v in every[1].items() if k not in ("mask", "overlay")}
    assert {k: v for k, v in alone[0].items() if k not in ("mask", "overlay")} == pick
    assert alone[0]["score"] and alone[0]["label"] in ("normal", "anomalous")
    one, two = tmp_path / "one" / alone[0]["mask"], tmp_path / "all" / every[1]["mask"]
    with Image.open(one) as m1, Image.open(two) as m2:
        assert m1.size == (W, H)  # the image's own size, not the model's 64 x 64
        assert np.array_equal(np.asarray(m1), np.asarray(m2))
    predict_files(calibrated, [tests[0]], "grass", tmp_path / "all", **kw)  # same folder again
    assert len(list((tmp_path / "all" / "masks").iterdir())) == 1  # the runs never mix


def test_predict_uses_exactly_the_raw_scores_calibration_saw(setup, calibrated):
    """At FPR 0.1 of 12 normals one may lie above the threshold: the second highest raw
    score predict gives a normal is the image threshold, so it gets exactly 0.5, normal."""
    from aaclip.calibration import load_calibration
    from aaclip.predict import Detector

    _, _, normals, _ = setup
    cal = load_calibration(calibrated)["grass"]
    det = Detector.from_checkpoint(calibrated, device="cpu")
    results = [det.predict(Image.open(p), description="grass") for p in normals]
    second = sorted(results, key=lambda r: r.score)[-2]
    assert second.score == cal.image_threshold
    assert second.normalised == 0.5 and second.label == "normal"
    assert [r.label for r in results].count("anomalous") == 1


def test_python_api_as_in_the_readme(setup, calibrated):
    from aaclip.predict import Detector

    _, _, _, tests = setup
    detector = Detector.from_checkpoint(calibrated, device="cpu")
    result = detector.predict(Image.open(tests[2]))  # the only calibrated class: grass
    assert result.map.shape == (H, W) and result.map.dtype == np.float32
    assert result.mask.shape == (H, W) and result.mask.dtype == bool
    assert 0.0 <= result.normalised <= 1.0
    assert result.label == ("anomalous" if result.normalised > 0.5 else "normal")
    assert result.class_name == "grass" and result.calibrated
    again = detector.predict(tests[2], description="grass")  # a path works too
    assert again.score == result.score and np.array_equal(again.map, result.map)


def test_without_calibration_raw_scores_only_and_one_plain_line(setup, tmp_path, capsys):
    root, ckpt, _, tests = setup
    argv = ["predict", "--checkpoint", str(ckpt), "--description", "grass"]
    assert main([*argv, "--out", str(tmp_path / "p"), "--device", "cpu", str(tests[0])]) == 0
    cap = capsys.readouterr()
    assert cap.err.strip() == (
        f"aaclip: note: no calibration exists for model.safetensors (`aaclip calibrate "
        f"--checkpoint {ckpt} --normal NORMAL_IMAGES` makes one): raw scores only, no label"
    )
    lines = cap.out.splitlines()
    assert lines[0].split() == ["image", "class", "mode", "raw", "score"]  # no score, no label
    assert lines[1].split()[:3] == [str(tests[0]), "grass", "zero-shot"]
    out = tmp_path / "p"
    assert lines[2] == f"wrote {out / 'scores.csv'}, 1 overlay in {out}/overlays"
    row = _rows(tmp_path / "p" / "scores.csv")[0]
    assert row["score"] == "" and row["label"] == "" and "mask" not in row
    assert not (tmp_path / "p" / "masks").exists()


def test_calibrated_predict_prints_score_and_label(setup, calibrated, tmp_path, capsys):
    _, _, _, tests = setup
    out = tmp_path / "p"
    argv = ["predict", "--checkpoint", str(calibrated), "--out", str(out), str(tests[1])]
    assert main(argv) == 0  # the single calibrated class is used
    cap = capsys.readouterr()
    assert cap.err == ""
    lines = cap.out.splitlines()
    assert lines[0].split() == ["image", "class", "mode", "raw", "score", "score", "label"]
    row = _rows(out / "scores.csv")[0]
    assert row["mode"] == "zero-shot"
    assert lines[1].split()[:5] == [
        str(tests[1]), "grass", "zero-shot", row["raw_score"], row["score"]
    ]  # fmt: skip
    assert lines[1].split()[-1] == row["label"]
    wrote = f"wrote {out / 'scores.csv'}, 1 overlay in {out}/overlays, 1 mask in {out}/masks"
    assert lines[2] == wrote


def test_a_calibration_for_another_class_or_checkpoint(setup, calibrated, tmp_path, capsys):
    _, _, _, tests = setup
    argv = ["predict", "--checkpoint", str(calibrated), "--description", "sky"]
    assert main([*argv, "--out", str(tmp_path / "p"), str(tests[0])]) == 0
    err = capsys.readouterr().err.strip()
    assert err == (
        "aaclip: note: no calibration for class 'sky' of model.safetensors (calibrated: grass): "
        "raw scores only, no label"
    )
    other = tmp_path / "model.safetensors"
    other.write_bytes(b"x")  # another checkpoint holding the same calibration file
    side = calibrated.with_name(calibrated.name + ".calibration.json")
    (tmp_path / side.name).write_bytes(side.read_bytes())
    from aaclip.calibration import load_calibration

    with pytest.raises(ValueError, match="calibrated for another checkpoint"):
        load_calibration(other)


def test_records_give_classes_and_ground_truth(setup, tmp_path, capsys):
    """Records: normals by class, anomalies with masks add the pixel TPR; predict on records
    shows the truth."""
    import shutil

    root, ckpt, normals, tests = setup
    data_dir = tmp_path / "set"
    for p in (*normals[:6], *tests):
        shutil.copy(p, data_dir / p.name if data_dir.exists() else _mk(data_dir) / p.name)
    mask = np.zeros((H, W), np.uint8)
    mask[10:22, 20:38] = 255
    Image.fromarray(mask).save(data_dir / "mask.png")
    recs = [{"image_path": p.name, "label": 0, "class_name": "grass"} for p in normals[:6]]
    recs += [{"image_path": p.name, "label": 1, "class_name": "grass", "mask_path": "mask.png"}
             for p in tests[1:]]  # fmt: skip
    records = data_dir / "test.jsonl"
    records.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    copy = tmp_path / "model.safetensors"
    shutil.copy(ckpt, copy)
    argv = ["calibrate", "--checkpoint", str(copy), "--normal", str(records)]
    assert main([*argv, "--anomalous", str(records), "--fpr", "0.2"]) == 0
    cap = capsys.readouterr()
    assert f"{records}: used 6 normal records, not the other 2" in cap.err
    row = cap.out.splitlines()[2].split()
    assert row[:2] == ["grass", "6"] and row[-3] == "2" and row[-1] != "–"  # pixel TPR
    out = tmp_path / "p"
    argv = ["predict", "--checkpoint", str(copy), "--out", str(out), "--no-overlays"]
    assert main([*argv, str(records)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "truth" and lines[-2].split()[-1] == "anomalous"
    truth = [r["true_label"] for r in _rows(out / "scores.csv")]
    assert truth == ["normal"] * 6 + ["anomalous"] * 2
    # one class at a time: calibrating another class keeps the first
    argv = ["calibrate", "--checkpoint", str(copy), "--normal", str(root / "normal")]
    assert main([*argv, "--description", "sky"]) == 0
    assert f"aaclip: note: kept the earlier calibration of class grass (remove {copy}" in (
        capsys.readouterr().err
    )
    from aaclip.calibration import load_calibration

    assert sorted(load_calibration(copy)) == ["grass", "sky"]


def _mk(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


def test_a_folder_needs_a_name_and_warnings_are_one_line(setup, tmp_path, capsys, monkeypatch):
    root, ckpt, _, tests = setup
    argv = ["calibrate", "--checkpoint", str(ckpt), "--normal", str(root / "normal")]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"aaclip: error: {root / 'normal'}: a folder is one class; name it with "
        "--class-name NAME or --description TEXT"
    )
    monkeypatch.setenv("AACLIP_WEIGHTS", str(tmp_path / "ViT-L-14-336.pt"))
    argv = ["predict", "--checkpoint", str(ckpt), "--description", "grass", "--no-overlays"]
    assert main([*argv, "--out", str(tmp_path / "p"), str(tests[0])]) == 0
    warned = [x for x in capsys.readouterr().err.splitlines() if "warning" in x.lower()]
    assert warned == [
        "aaclip: warning: AACLIP_WEIGHTS ignored for aaclip-tiny: the tiny smoke backbones are "
        "random by design (pass --weights to load a file into one)"
    ]


def test_pick_device_checks_the_string(monkeypatch):
    from aaclip import devices
    from aaclip.devices import DeviceError
    from aaclip.runtime import pick_device

    monkeypatch.setattr(devices, "_gpu_count", lambda: 0)
    for text in ("cuda", "gpu"):
        with pytest.raises(DeviceError):
            pick_device(text)
    assert pick_device("cpu").type == "cpu"


def test_the_readme_python_example_runs(setup, calibrated, capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Python API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert "Detector.from_checkpoint" in block
    block = block.replace(
        "runs/smoke/aaclip/checkpoints/stage2_epoch020.safetensors", str(calibrated)
    ).replace("data/synthetic/grass/test/blob/000.png", str(setup[3][2]))
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    result = scope["result"]
    assert result.label in ("normal", "anomalous") and 0 <= result.normalised <= 1
    assert scope["heat"].shape == scope["mask"].shape == (H, W)
    assert capsys.readouterr().out.splitlines()[2] == result.label
