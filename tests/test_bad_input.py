"""Every bad input is one line with exit status 2, Ctrl-C is 130 (issue 19, item 6), and
exploration writes under the untracked results/_scratch/ (item 5)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aaclip import cli
from aaclip.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _img(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(90, 160, (40, 60, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny random AA-CLIP checkpoint (64 px)."""
    import torch

    from aaclip import checkpoints as ck
    from aaclip.config import apply_overrides, preset
    from aaclip.methods import create_method

    root = tmp_path_factory.mktemp("bad_input")
    torch.manual_seed(0)
    cfg = apply_overrides(preset("smoke"), ["backbone.image_size=64"])
    model = create_method(cfg, "cpu")
    meta = {"method": model.name, "stage": 2, "epoch": 1, "config": cfg.to_dict()}
    meta["backbone"] = model.backbone.identity
    path = root / "model.safetensors"
    ck.save_adapters(path, model.adapter_state(), meta)
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("aaclip: error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


# --------------------------------------------------------------------------- --set types
@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("model.stage2_epochs=abc", "takes int, not 'abc'"),
        ("model.stage2_epochs=2.5", "takes int, not '2.5'"),
        ("model.stage1_lr=fast", "takes float, not 'fast'"),
        ("backbone.quick_gelu=1", "takes bool, not '1'"),
        ("train.shots=many", "takes int or null, not 'many'"),
        ("model.betas=[0.9]", "takes a list of 2 (float, float)"),
        ("data.test_records=3", "takes a list of str"),
    ],
)
def test_set_value_of_the_wrong_type_is_one_line_before_anything_runs(
    item, expected, tmp_path, capsys, monkeypatch
):
    import aaclip.train

    def never(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(aaclip.train, "train", never)
    run = tmp_path / "run"
    assert main(["train", "--run", str(run), "--set", item]) == 2
    line = one_error_line(capsys)
    key, _, value = item.partition("=")
    assert line.startswith(f"aaclip: error: --set {key}={value}: {key} ") and expected in line
    assert not run.exists()


def test_set_values_of_the_right_type_are_kept():
    from aaclip.config import apply_overrides, preset

    cfg = apply_overrides(
        preset("smoke"),
        ["model.stage2_epochs=3", "model.stage1_lr=1", "backbone.weights=null",
         "data.train_dataset=2024", "train.shots=null", "model.betas=[0.8,0.9]",
         "backbone.quick_gelu=true"],
    )  # fmt: skip
    assert cfg.model.stage2_epochs == 3 and cfg.model.stage1_lr == 1.0
    assert isinstance(cfg.model.stage1_lr, float)
    assert cfg.backbone.weights is None and cfg.data.train_dataset == "2024"
    assert cfg.model.betas == (0.8, 0.9) and cfg.backbone.quick_gelu is True


# --------------------------------------------------------------------------- output folders
def _argv(command: str, out: Path, checkpoint: Path, image: Path) -> list[str]:
    return {
        "predict": ["predict", "--checkpoint", str(checkpoint), "--out", str(out), str(image)],
        "train": ["train", "--run", str(out)],
        "export": ["export", "--checkpoint", str(checkpoint), "--class-name", "grass",
                   "--out", str(out)],
        "grid": ["grid", "--methods", "clip", "--out", str(out)],
        "protocol": ["protocol", "mvfa", "--out", str(out)],
        "calibrate": ["calibrate", "--checkpoint", str(checkpoint), "--normal",
                      str(image.parent), "--class-name", "grass", "--out", str(out / "c.json")],
        "bench": ["bench", "--out", str(out)],
        "import-released": ["import-released", "--method", "mvfa", "--released", "x.pth",
                            "--out", str(out / "m.safetensors")],
    }[command]  # fmt: skip


COMMANDS = ["predict", "train", "export", "grid", "protocol", "calibrate", "bench",
            "import-released"]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_under_a_file_is_one_line_naming_it(command, checkpoint, tmp_path, capsys):
    image = _img(tmp_path / "photos" / "a.png", 0)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = blocker / "out"
    assert main(_argv(command, out, checkpoint, image)) == 2
    line = one_error_line(capsys)
    assert str(blocker) in line and "is a file, not a folder" in line


@pytest.mark.parametrize("command", COMMANDS)
def test_a_read_only_output_folder_is_one_line_naming_it(
    command, checkpoint, tmp_path, capsys, monkeypatch
):
    """Read-only as a user sees it (the tests may run as root, who writes anywhere)."""
    image = _img(tmp_path / "photos" / "a.png", 0)
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **k: False if Path(p) == locked else real(p, mode, **k)
    )
    assert main(_argv(command, locked / "out", checkpoint, image)) == 2
    line = one_error_line(capsys)
    assert str(locked) in line and "cannot write there" in line
    assert not (locked / "out").exists()


def test_test_writes_its_eval_folder_or_says_it_cannot(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval").write_text("not a folder")
    assert main(["test", "--run", str(run)]) == 2
    assert "is a file, not a folder" in one_error_line(capsys)


def test_a_permission_error_while_writing_is_one_line(monkeypatch, capsys):
    def denied(args):
        raise PermissionError(13, "Permission denied", "/read-only/out/scores.csv")

    monkeypatch.setattr(cli, "cmd_methods", denied)
    assert main(["methods"]) == 2
    assert one_error_line(capsys) == (
        "aaclip: error: /read-only/out/scores.csv: Permission denied"
    )


def test_calibrate_out_lets_a_read_only_checkpoint_be_calibrated(checkpoint, tmp_path, capsys):
    """`calibrate` wrote only beside the checkpoint; `--out FILE` writes elsewhere and
    `predict --calibration FILE` (and `Detector.from_checkpoint(calibration=FILE)`) read it."""
    from aaclip.calibration import calibration_path
    from aaclip.predict import Detector

    normals = tmp_path / "normals"
    for i in range(8):
        _img(normals / f"{i}.png", 10 + i)
    image = _img(tmp_path / "photos" / "a.png", 0)
    cal = tmp_path / "elsewhere" / "model.calibration.json"
    argv = ["calibrate", "--checkpoint", str(checkpoint), "--normal", str(normals),
            "--class-name", "grass", "--fpr", "0.25", "--out", str(cal), "--device", "cpu"]
    assert main(argv) == 0
    assert cal.is_file() and not calibration_path(checkpoint).exists()
    assert f"stored {cal}" in capsys.readouterr().out
    out = tmp_path / "p"
    argv = ["predict", "--checkpoint", str(checkpoint), "--calibration", str(cal),
            "--class-name", "grass", "--out", str(out), "--device", "cpu", str(image)]
    assert main(argv) == 0
    with open(out / "scores.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["label"] in ("normal", "anomalous") and row["score"]
    det = Detector.from_checkpoint(checkpoint, device="cpu", calibration=cal)
    assert set(det.calibrations) == {"grass"}
    exported = tmp_path / "exported"
    argv_export = ["export", "--checkpoint", str(checkpoint), "--class-name", "grass",
                   "--calibration", str(cal), "--out", str(exported)]  # fmt: skip
    assert main(argv_export) == 0
    assert json.loads((exported / "manifest.json").read_text())["calibration"]
    argv[argv.index(str(cal))] = str(tmp_path / "missing.json")
    assert main(argv) == 2
    assert "no such calibration file" in one_error_line(capsys)


# --------------------------------------------------------------------------- other inputs
def test_a_missing_run_folder_is_named(tmp_path, capsys):
    assert main(["test", "--run", str(tmp_path / "nothere")]) == 2
    line = one_error_line(capsys)
    assert "no such run folder" in line and "nothere" in line and "epoch" not in line


def test_predict_never_reads_an_earlier_output_folder_back(checkpoint, tmp_path, capsys):
    """`predict .` twice with different --out: 2 images stay 2 rows (were 6: the first
    run's overlays and masks were scored too)."""
    from aaclip.predict import collect_images

    photos = tmp_path / "photos"
    for i in range(2):
        _img(photos / f"{i}.png", i)
    for out in ("first", "second"):
        argv = ["predict", "--checkpoint", str(checkpoint), "--description", "grass",
                "--out", str(photos / out), "--device", "cpu", str(photos)]  # fmt: skip
        assert main(argv) == 0
        with open(photos / out / "scores.csv") as f:
            rows = list(csv.DictReader(f))
        assert [Path(r["image"]).name for r in rows] == ["0.png", "1.png"]
    notes: list[str] = []
    assert len(collect_images([photos], report=notes.append)) == 2
    assert any("first: an output folder of `aaclip predict`" in n for n in notes)
    # an older output folder without the marker: scores.csv beside overlays/
    legacy = photos / "old"
    _img(legacy / "overlays" / "0000_a.png", 3)
    (legacy / "scores.csv").write_text("image,raw_score\n")
    assert len(collect_images([photos], report=lambda m: None)) == 2
    with pytest.raises(FileNotFoundError, match="no readable images"):
        collect_images([photos / "first"], report=lambda m: None)


def test_one_list_of_image_suffixes_for_folders_and_named_files(tmp_path):
    from aaclip.fileio import IMAGE_SUFFIXES
    from aaclip.predict import collect_images
    from data_prep._common import IMAGE_EXTENSIONS

    assert ".webp" in IMAGE_SUFFIXES and IMAGE_EXTENSIONS == IMAGE_SUFFIXES
    folder = tmp_path / "f"
    _img(folder / "a.png", 0)
    Image.open(folder / "a.png").save(folder / "b.webp", lossless=True)
    (folder / "c.txt").write_text("x")
    notes: list[str] = []
    in_folder = collect_images([folder], report=notes.append)
    named = collect_images([folder / "a.png", folder / "b.webp", folder / "c.txt"],
                           report=notes.append)  # fmt: skip
    assert [p.name for p in in_folder] == [p.name for p in named] == ["a.png", "b.webp"]
    assert any(n.startswith(f"skipped {folder / 'c.txt'}: not an image file") for n in notes)


def test_ctrl_c_exits_130_in_process(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_methods", interrupted)
    assert main(["methods"]) == 130
    assert capsys.readouterr().err.strip() == "aaclip: interrupted"


def test_ctrl_c_during_training_exits_130_and_says_how_to_resume(monkeypatch, tmp_path, capsys):
    import aaclip.train

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(aaclip.train, "train", interrupted)
    assert main(["train", "--run", str(tmp_path / "run")]) == 130
    assert "the same command resumes from the start" in capsys.readouterr().err


def test_sigint_exits_130(tmp_path):
    """A real Ctrl-C (SIGINT) to the process: status 130, one line, no traceback."""
    code = (
        "import sys, time\n"
        "from aaclip import cli\n"
        "def slow(args):\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
        "cli.cmd_methods = slow\n"
        "sys.exit(cli.main(['methods']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip() == "aaclip: interrupted"


# --------------------------------------------------------------------------- exploration
def test_bench_and_protocol_write_untracked_unless_asked(monkeypatch, tmp_path):
    import inspect

    from aaclip.bench import run_bench
    from aaclip.medical import default_folders
    from aaclip.results import SCRATCH

    args = cli.build_parser().parse_args(["bench"])
    assert Path(args.out) == SCRATCH / "bench"
    assert inspect.signature(run_bench).parameters["out_dir"].default == SCRATCH / "bench"
    assert default_folders("mvfa", "smoke", None, None) == (
        SCRATCH / "protocol" / "mvfa-smoke",
        Path("runs/protocol/mvfa-smoke"),
    )
    tracked = Path("results/protocol/mvfa-smoke")
    assert default_folders("mvfa", "smoke", tracked, None)[0] == tracked
    paths = [str(SCRATCH / "bench" / "bench.csv"), str(SCRATCH / "protocol" / "x" / "table.md"),
             str(SCRATCH / "method-dpclip" / "tables" / "t.csv")]  # fmt: skip
    ignored = subprocess.run(
        ["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True
    )
    if ignored.returncode == 128:
        pytest.skip("not a git checkout")
    assert ignored.stdout.split() == paths  # .gitignore: results/**/_scratch/


def test_notebooks_with_other_parameters_write_untracked():
    from aaclip.analysis.notebook import exploration_name, results_folder
    from aaclip.results import SCRATCH

    default = dict(method="aaclip", methods=None, targets=None, shots=None, epochs=None,
                   seeds=[111], quick=False)  # fmt: skip
    assert results_folder(None, **default) == Path("results")
    assert results_folder(None, **(default | {"method": "dpclip"})) == SCRATCH / "method-dpclip"
    assert exploration_name(**(default | {"shots": 8, "quick": True})) == "shots-8_quick"
    assert exploration_name(**(default | {"targets": ["MVTec", "BTAD"]})) == "targets-MVTec+BTAD"
    # asked explicitly: written where asked, even the tracked folder
    assert results_folder("results", **(default | {"method": "dpclip"})) == Path("results")


def test_the_notebooks_default_to_the_automatic_results_folder():
    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        nb = json.loads(path.read_text())
        params = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
        values: dict = {}
        exec(params, {}, values)
        assert values["results_dir"] is None, path.name


# --------------------------------------------------------------------------- torchrun
def test_under_torchrun_the_error_line_is_the_root_cause(monkeypatch, tmp_path, capsys):
    """torchrun prints its own failure report for any worker that exits non-zero (its agent,
    not ours); the one line goes to the worker's error file so that report names it."""
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    monkeypatch.setenv("RANK", "0")
    assert main(["test", "--run", str(tmp_path / "nothere")]) == 2
    line = one_error_line(capsys)
    doc = json.loads(error_file.read_text())
    assert doc["message"]["message"] == line
    assert doc["message"]["extraInfo"]["py_callstack"] == line


@pytest.mark.slow
def test_torchrun_refusal_is_our_line_first_and_the_root_cause(synthetic_root, tmp_path):
    """Two CPU ranks, DP-CLIP (updates state after each step): refused in one line, printed
    once, first, and named as the root cause of torchrun's report."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip("torchrun not installed beside this python")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "synthetic").symlink_to(synthetic_root, target_is_directory=True)
    done = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "-m", "aaclip", "--", "train", "--method",
         "dpclip", "--profile", "smoke", "--run", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    err = done.stderr.splitlines()
    ours = [line for line in err if line.startswith("aaclip: error:")]
    assert len(ours) == 1 and err[0] == ours[0] and "train it in one process" in ours[0]
    assert f"traceback : {ours[0]}" in done.stderr
