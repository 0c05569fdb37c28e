"""Contract tests at every exit, over the registry: predict, calibrate, export speak for the
method exactly as `test` does, zero-shot and (where a method has one) few-shot.

- predict one image = test on it: `Detector` (the exit behind `predict` and `calibrate`)
  sees the very raw outputs the evaluation pass saw for the image (same preprocessing, same
  class context, few-shot: the same memory bank), its score is the method's own per-image
  rule (`Method.score_rule`) on them, and pooling the per-image outputs of a class and
  normalising them as `class_scores` does gives test's maps and scores;
- calibrate, then predict: the threshold normal scores 0.5, labels follow the threshold,
  normalised scores spread inside (0, 1);
- export (PyTorch, and ONNX where the method allows it) = the checkpoint's `Detector`.

Tiny random CLIP at 64 px, a handful of images, one checkpoint per case built once.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from aaclip import checkpoints as ck
from aaclip import data
from aaclip.config import apply_overrides, preset
from aaclip.evaluate import eval_sets, load_methods
from aaclip.evaluate import predict as evaluate_pass
from aaclip.methods import METHODS, Method, Prediction, create_method, list_methods
from aaclip.predict import Detector
from aaclip.reference import ReferenceError

SIZE = 64
N = 3  # normal and anomalous images per case


def _few_shot(name: str) -> bool:
    return METHODS[name].fit_memory is not Method.fit_memory


CASES = [(m, "zero") for m in list_methods()]
CASES += [(m, "few") for m in list_methods() if _few_shot(m) or "few_shot" in METHODS[m].PROTOCOLS]


@dataclass
class Case:
    name: str
    mode: str
    cfg: object
    checkpoint: Path
    records: list
    root: Path
    records_file: Path
    dataset: str | None
    domain: str
    memory: list | None
    memory_root: Path | None
    class_name: str
    expected_mode: str


def _subset(records_file: Path, n: int = N) -> tuple[Path, list]:
    records = data.load_records(records_file, require_masks=False)
    cls = records[0].class_name
    mine = [r for r in records if r.class_name == cls]
    picked = [r for r in mine if r.label == 0][:n] + [r for r in mine if r.label == 1][:n]
    out = records_file.with_name(f"exit_contract_{records_file.stem}.jsonl")
    data.write_records(out, picked)
    return out, picked


@pytest.fixture(scope="module", params=CASES, ids=[f"{m}-{k}" for m, k in CASES])
def case(request, synthetic_root, tmp_path_factory) -> Case:
    name, mode = request.param
    cls = METHODS[name]
    over = [f"backbone.image_size={SIZE}"]
    protocol = {"zero": "zero_shot", "few": "few_shot"}[mode]
    over += cls.PROTOCOLS.get(protocol, [])  # the method's own switches of that mode
    if mode == "few" and _few_shot(name):  # the MVFA-layout Brain set, 4-shot
        base = preset("smoke", name, data_root=str(synthetic_root))
        folder = synthetic_root / "mvfa" / "Brain_AD"
        test_file, records = _subset(folder / "test.jsonl")
        over += [
            f'data.test_records=["{test_file}"]',
            f'data.memory_records=["{folder / "4-shot.jsonl"}"]',
        ]
    else:
        base = preset("smoke", name, data_root=str(synthetic_root))
        test_file, records = _subset(synthetic_root / "industrial_test.jsonl")
        over += [
            f'data.test_records=["{test_file}"]',
            'data.test_datasets=["synthetic"]',
            'data.test_domains=["industrial"]',
            "data.memory_records=[]",
        ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cfg = apply_overrides(base, over)
            method = create_method(cfg, "cpu")
        except ValueError as err:  # ClipMPCAD: few-shot only
            pytest.skip(f"{name} has no {mode}-shot mode: {err}")
    torch.manual_seed(3)  # trained-looking adapters, not the init
    with torch.no_grad():
        for p in method.adapters.parameters():
            if p.is_floating_point():
                p.add_(0.05 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp(f"exit-{name}-{mode}")
    path = folder / "model.safetensors"
    meta = {"method": name, "stage": 1, "epoch": 1, "config": cfg.to_dict()}
    meta["backbone"] = method.backbone.identity
    ck.save_adapters(path, method.adapter_state(), meta)
    ts = eval_sets(cfg)[0]
    memory = ts.memory()
    expected = "few-shot (no memory bank)" if mode == "few" else "zero-shot"
    if memory is not None:
        assert "reference" in ck.read_meta(path)  # the checkpoint carries its normals
        k = sum(r.class_name == records[0].class_name for r in memory)
        expected = f"few-shot k={k}"
    return Case(
        name, mode, cfg, path, records, ts.root, test_file, ts.dataset, ts.domain, memory,
        ts.memory_file.parent if ts.memory_file else None, records[0].class_name, expected,
    )  # fmt: skip


def _detector(case: Case, checkpoint: Path | None = None) -> tuple[Detector, object]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = Detector.from_checkpoint(checkpoint or case.checkpoint, device="cpu")
    dataset = None if checkpoint else case.dataset  # calibrated: the calibration's text
    target = det.target(case.class_name, None, case.domain, dataset=dataset)
    return det, target


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-5, msg=what)


def test_predict_one_image_is_test_on_it(case: Case) -> None:
    det, target = _detector(case)
    assert target.mode == case.expected_mode
    methods = load_methods(case.cfg, [case.checkpoint], torch.device("cpu"))
    # one image per batch, as predict scores it (batch independence is its own contract
    # test): min-max over a class magnifies batched-matmul rounding (IQE-CLIP: 2e-4)
    batch = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tested = evaluate_pass(
            methods, case.records, case.root, dataset=case.dataset, domain=case.domain,
            batch_size=batch, progress=False, keep_raw=True, memory=case.memory,
            memory_root=case.memory_root,
        )["model"][case.class_name]  # fmt: skip
    ctx = det.context(target)
    parts = []
    for i, path in enumerate(tested.image_paths):
        image = data.load_image(case.root / path)
        pred = det.raw_prediction(image, target)
        raw = tested.raw
        _close(pred.maps[0], raw.maps[i], f"{path}: raw map")
        _close(pred.scores[0], raw.scores[i], f"{path}: raw score")
        assert set(pred.extra) == set(raw.extra)  # few-shot: the memory terms too
        for k in raw.extra:
            _close(pred.extra[k][0], raw.extra[k][i], f"{path}: {k}")
        score, small = det.raw(image, target)  # what predict and calibrate report
        rule_maps, rule_scores = det.method.score_rule(pred, ctx)
        assert score == pytest.approx(float(rule_scores[0]), rel=1e-6, abs=1e-7)
        _close(small, rule_maps[0], f"{path}: rule map")
        result = det.predict(image, target=target)
        assert result.score == score and result.mode == case.expected_mode
        assert result.map.shape == image.size[::-1]
        parts.append(pred)
    pooled = Prediction.cat(parts)
    maps, scores = det.method.class_scores(pooled, ctx)  # normalised over the class, as test
    _close(scores, tested.scores.cpu(), "test's image scores from predict's per-image outputs")
    _close(maps, tested.maps.cpu(), "test's maps from predict's per-image outputs")


def test_calibrate_then_predict_puts_the_threshold_at_one_half(case: Case, tmp_path) -> None:
    from aaclip.calibrate import calibrate_checkpoint
    from aaclip.calibration import load_calibration

    ckpt = tmp_path / "model.safetensors"
    shutil.copy(case.checkpoint, ckpt)
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = calibrate_checkpoint(
            ckpt, case.records_file, fpr=0.4, device="cpu", report=notes.append
        )
    assert run.mode == case.expected_mode
    cal = load_calibration(ckpt)[case.class_name]
    assert cal.extra["mode"] == case.expected_mode and cal.extra["domain"] == case.domain
    det, target = _detector(case, ckpt)
    assert target.calibration is not None
    results = [det.predict(case.root / r.image_path, target=target) for r in case.records]
    raw = [r.score for r in results]
    at = [r for r in results if r.score == cal.image_threshold]
    assert at and all(r.normalised == 0.5 and r.label == "normal" for r in at)
    for r in results:
        assert 0.0 < r.normalised < 1.0  # spread, never clipped
        assert (r.normalised > 0.5) == (r.label == "anomalous") == (r.score > cal.image_threshold)
        assert r.mode == case.expected_mode
    order = np.argsort(raw, kind="stable")
    assert np.all(np.diff(np.asarray([results[i].normalised for i in order])) >= 0)


def _onnx_ok() -> bool:
    from aaclip import export

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return export.onnx_available()


def test_export_equals_the_checkpoint(case: Case, tmp_path) -> None:
    from aaclip import deploy, export
    from aaclip.transforms import image_to_tensor

    det, target = _detector(case)
    method = det.method
    if method.class_anchors(case.class_name, case.dataset) is None:
        with pytest.raises(export.ExportError, match="computes its text from each image") as e:
            export.export_checkpoint(case.checkpoint, case.class_name, tmp_path / "e")
        assert "\n" not in str(e.value)
        return
    onnx = _onnx_ok() and case.memory is None
    notes: list[str] = []
    export.export_checkpoint(
        case.checkpoint, case.class_name, tmp_path / "e", dataset=case.dataset,
        domain=case.domain, onnx=onnx, report=notes.append,
    )  # fmt: skip
    manifest = deploy.verify(tmp_path / "e")
    assert manifest["mode"] == case.expected_mode
    runtimes = ["torch"] + (["onnx"] * onnx)
    spec = method.input_spec()
    images = [data.load_image(case.root / r.image_path) for r in case.records[::2]]
    x = torch.stack([image_to_tensor(im, spec.image_size, spec.mean, spec.std) for im in images])
    want = [det.raw(im, target) for im in images]
    for runtime in runtimes:
        got = deploy.load(tmp_path / "e", runtime).predict(x)
        tol = 1e-5 if runtime == "torch" else 1e-4
        for i, (score, small) in enumerate(want):
            assert float(got.scores[i]) == pytest.approx(score, rel=tol, abs=tol), runtime
            torch.testing.assert_close(got.maps[i].float(), small.float(), rtol=tol, atol=tol)
    if case.memory is not None and export.onnx_available():  # ONNX refused in one line
        with pytest.raises(export.ExportError, match="few-shot export") as e:
            export.export_checkpoint(
                case.checkpoint, case.class_name, tmp_path / "o", onnx=True, report=notes.append
            )
        assert "\n" not in str(e.value)


def test_a_few_shot_checkpoint_refuses_moved_or_changed_normals(case: Case, tmp_path) -> None:
    if case.memory is None:
        pytest.skip("zero-shot: no reference normals")
    det, target = _detector(case)
    ref = target.reference
    first = ref.folder / ref.normals[0][0]
    keep = tmp_path / "kept.png"
    shutil.copy(first, keep)
    try:
        first.write_bytes(first.read_bytes() + b"\0")  # changed
        fresh, t2 = _detector(case)
        with pytest.raises(ReferenceError, match="changed") as e:
            fresh.predict(case.root / case.records[0].image_path, target=t2)
        assert "\n" not in str(e.value)
        first.unlink()  # moved
        fresh, t2 = _detector(case)
        with pytest.raises(ReferenceError, match="missing") as e:
            fresh.predict(case.root / case.records[0].image_path, target=t2)
    finally:
        shutil.copy(keep, first)
    with pytest.raises(ReferenceError, match="not 'someother'") as e:
        det.target("someother")
    assert "\n" not in str(e.value)


def test_a_few_shot_checkpoint_made_before_references_says_so(case: Case, tmp_path) -> None:
    """No stored hashes (an older checkpoint): the config's memory records are used as found,
    with one note; the scores are those of the checkpoint that stores them."""
    if case.memory is None:
        pytest.skip("zero-shot: no reference normals")
    tensors, meta = ck.load_adapters(case.checkpoint)
    old = tmp_path / "old.safetensors"
    ck.save_adapters(old, tensors, {**meta, "reference": None})
    assert ck.read_meta(old)["reference"] is None
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = Detector.from_checkpoint(old, device="cpu", report=notes.append)
    assert len(notes) == 1 and "stores no hashes of its reference normals" in notes[0]
    new, target = _detector(case)
    image = data.load_image(case.root / case.records[-1].image_path)
    t_old = det.target(case.class_name, None, case.domain, dataset=case.dataset)
    assert t_old.mode == case.expected_mode
    assert det.raw(image, t_old)[0] == pytest.approx(new.raw(image, target)[0], abs=1e-6)
