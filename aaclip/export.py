"""Export a trained detector of one class to a self-describing folder (and optionally ONNX).

`aaclip export --checkpoint C --class-name NAME --out DIR` computes the class's text anchors
once and writes everything inference needs beside a `manifest.json`:

    manifest.json          method, config, class, input spec, scoring rule, backbone identity,
                           package versions, date and the sha256 of every other file
    adapter.safetensors    the method's trainable state (the checkpoint's tensors)
    anchors.safetensors    the (E, 2) text anchors, baked: no text encoder at inference
    memory.safetensors     few-shot: the class's memory bank, fitted on the checkpoint's
                           reference normals (checked by hash) as evaluation fits it
    backbone.safetensors   the frozen CLIP (`--backbone embed`, the default); with
                           `--backbone reference` only its identity (content hash) is kept
    calibration.json       thresholds of the class, when the checkpoint has a calibration
    model.onnx (+ .data)   `--onnx`: preprocessed images -> (raw maps, raw scores), dynamic batch

`ExportedDetector` is that image path as one `torch.nn.Module` with the class context fixed,
ending in the method's own per-image score rule (`Method.score_rule`), so its maps and
scores are what `aaclip predict` gives from the checkpoint; the ONNX file is
`torch.onnx.export` of it (zero-shot only: a memory bank's chunked search is not traced).
`aaclip.deploy` loads and checks an export (a different package version or a file whose hash
differs from the manifest is refused by name).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import sys
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from aaclip import __version__
from aaclip.methods import ClassContext, Method, Prediction

FORMAT = 1
MANIFEST = "manifest.json"
ADAPTER = "adapter.safetensors"
ANCHORS = "anchors.safetensors"
MEMORY = "memory.safetensors"
BACKBONE = "backbone.safetensors"
CALIBRATION = "calibration.json"
ONNX = "model.onnx"
ONNX_INPUT = "images"
ONNX_OUTPUTS = ("maps", "scores")
BACKBONE_MODES = ("embed", "reference")

SCORING_RULES = {
    "industrial": "per image: score = 0.5 * max(map) + 0.5 * p (aaclip test: each term "
    "min-max normalised over a class first)",
    "medical": "per image: score = max(map) (aaclip test: map min-max normalised over a class)",
}


class ExportError(ValueError):
    """An export that cannot be made or used: one line naming the file or the reason."""


class ExportedDetector(nn.Module):
    """A method's image path for one class, its context fixed: images -> (maps, raw scores).

    Input: a preprocessed batch (B, 3, S, S) (the export's input spec: resize to S x S
    bicubic, [0, 1], normalise). Output: anomaly maps (B, S, S) and raw image scores (B,),
    exactly `method.score_rule(method.predict(images, ctx), ctx)` (the per-image rule, no
    normalisation) with `ctx.text` = the baked anchors and, few-shot, `ctx.memory` = the
    baked memory bank (`memory`: its per-level normalised features).
    """

    def __init__(
        self,
        method: Method,
        anchors: torch.Tensor,
        class_name: str,
        domain: str,
        dataset: str | None = None,
        has_masks: bool = True,
        memory: list[torch.Tensor] | None = None,
        mode: str = "zero-shot",
    ) -> None:
        super().__init__()
        self.method = method
        self.register_buffer("anchors", anchors.detach().float().clone())
        self.levels = len(memory or [])
        for i, f in enumerate(memory or []):
            self.register_buffer(f"memory_{i}", f.detach().clone())
        self.class_name, self.domain, self.dataset, self.has_masks, self.mode = (
            class_name,
            domain,
            dataset,
            has_masks,
            mode,
        )

    def memory_features(self) -> list[torch.Tensor]:
        return [getattr(self, f"memory_{i}") for i in range(self.levels)]

    def context(self) -> ClassContext:
        from aaclip.memory import MemoryBank

        bank = MemoryBank.of_features(self.memory_features()) if self.levels else None
        return ClassContext(
            self.class_name, self.dataset, self.domain, self.has_masks, self.anchors, bank
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = self.context()
        return self.method.score_rule(self.method.predict(images, ctx), ctx)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        maps, scores = self(images)
        return Prediction(maps, scores)


def fixed_text_anchors(
    method: Method, class_name: str, dataset: str | None, description: str | None
) -> torch.Tensor:
    """The (E, 2) anchors of a class; one line refusing a method whose text is per image."""
    with torch.no_grad(), method.autocast():
        anchors = method.class_anchors(class_name, dataset, description)
    if not isinstance(anchors, torch.Tensor):
        raise ExportError(
            f"method {method.name} computes its text from each image (no fixed class anchors); "
            "export supports methods whose text depends only on the class"
        )
    return anchors.float()


def detector_for(
    method: Method,
    class_name: str,
    domain: str = "industrial",
    description: str | None = None,
    dataset: str | None = None,
    reference=None,
    source: str = "checkpoint",
) -> ExportedDetector:
    """An `ExportedDetector` of a method with the class's anchors computed now (once) and,
    with a `reference` (`aaclip.reference.ReferenceClass`: few-shot), the memory bank
    fitted on its reference normals as evaluation fits it."""
    from aaclip.prompts import DOMAINS

    if domain not in DOMAINS:
        raise ExportError(f"domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
    anchors = fixed_text_anchors(method, class_name, dataset, description)
    if reference is None:
        return ExportedDetector(method.eval(), anchors, class_name, domain, dataset).eval()
    from aaclip.memory import MemoryBank

    method.eval()
    ctx = method.prepare_class(class_name, dataset, domain, reference.has_masks, description)
    images = reference.images(method.input_spec(), method.device, source)
    bank = method.fit_memory(ctx, images).memory
    if not isinstance(bank, MemoryBank):
        raise ExportError(
            f"method {method.name}: its few-shot memory ({type(bank).__name__}) cannot be "
            "exported (only a MemoryBank of features)"
        )
    return ExportedDetector(
        method, anchors, class_name, domain, dataset, reference.has_masks,
        [f.float() for f in bank.features], reference.mode,
    ).eval()  # fmt: skip


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(detector: ExportedDetector, path: str | Path, image_size: int) -> list[Path]:
    """`torch.onnx.export` of the detector on CPU in fp32, batch axis dynamic; returns the files
    written (the graph and, for large weights, its external data file)."""
    if not onnx_available():
        raise ExportError(
            "--onnx needs the onnx and onnxscript packages: pip install 'aaclip[export]'"
        )
    path = Path(path)
    before = set(path.parent.iterdir()) if path.parent.is_dir() else set()
    method = detector.method
    precision, method.precision = method.precision, "fp32"
    detector = detector.to("cpu").eval()
    example = torch.zeros(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(
                detector, (example,), dynamic_shapes={"images": {0: batch}}, strict=False
            )
            torch.onnx.export(
                program,
                (example,),
                str(path),
                input_names=[ONNX_INPUT],
                output_names=list(ONNX_OUTPUTS),
                external_data=True,
                verbose=False,
            )
    finally:
        method.precision = precision
    return sorted(p for p in set(path.parent.iterdir()) - before if p.is_file())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's own content (every key but `manifest_sha256`)."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def versions() -> dict[str, str]:
    import open_clip

    out = {"aaclip": __version__, "torch": torch.__version__, "open_clip": open_clip.__version__}
    try:
        import onnx

        out["onnx"] = onnx.__version__
    except ImportError:
        pass
    return out


def checkpoint_calibration(checkpoint: str | Path, file: str | Path | None = None) -> dict | None:
    """The calibration stored beside a checkpoint (`<checkpoint>.calibration.json`), or in
    `file` (`aaclip calibrate --out`), as the JSON dict (its `classes` readable by
    `calibration.calibrations_from_dict`), or None."""
    from aaclip import calibration

    loader = getattr(calibration, "load_calibration", None)
    path = Path(file) if file is not None else Path(f"{checkpoint}.calibration.json")
    if loader is not None:
        cals = loader(checkpoint, file) if file is not None else loader(checkpoint)
        if not cals:
            return None
        extra = json.loads(path.read_text()) if path.is_file() else {}
        return {
            **{k: v for k, v in extra.items() if k != "classes"},
            **calibration.calibrations_to_dict(cals),
        }
    if not path.is_file():  # calibration support without load_calibration: read the file
        return None
    try:
        data = json.loads(path.read_text())
        calibration.calibrations_from_dict(data)
    except ValueError as err:
        raise ExportError(f"{path}: not a readable calibration ({err})") from None
    saved = data.get("checkpoint_sha256")
    if saved and saved != _sha256(Path(checkpoint)):
        raise ExportError(
            f"{path}: made for another checkpoint (sha256 {str(saved)[:12]}); calibrate again"
        )
    return data


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    from aaclip.fileio import atomic_write

    atomic_write(path, save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}))


def _note(message: str) -> None:
    print(f"aaclip: warning: {message}", file=sys.stderr)


def export_detector(
    detector: ExportedDetector,
    cfg,
    out: str | Path,
    *,
    description: str | None = None,
    backbone: str = "embed",
    onnx: bool = False,
    calibration: dict | None = None,
    checkpoint: str | Path | None = None,
    report: Callable[[str], None] | None = None,
) -> Path:
    """Write an export folder from a detector (its method's adapters, its anchors) and the
    method's `ExperimentConfig`; return the manifest path. `calibration` is the JSON dict of
    the checkpoint's calibration (`checkpoint_calibration`); only the class's entry is kept."""
    report = report or _note
    if backbone not in BACKBONE_MODES:
        raise ExportError(f"--backbone must be embed or reference, got {backbone!r}")
    if cfg.backbone.precision == "fp64":  # exports are float32 (ONNX, deployment)
        cfg = dataclasses.replace(
            cfg, backbone=dataclasses.replace(cfg.backbone, precision="fp32")
        )
        detector = detector.float()
    if onnx and not onnx_available():
        raise ExportError(
            "--onnx needs the onnx and onnxscript packages: pip install 'aaclip[export]'"
        )
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: exists and is not an empty folder; choose a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp"  # renamed when complete
    tmp.mkdir()
    try:
        _write(detector, cfg, tmp, description, backbone, onnx, calibration, checkpoint, report)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / MANIFEST


def portable_config(cfg) -> dict:
    """The config as an export keeps it: no path of the build machine. The backbone file is
    named by the identity (name and sha256); a `--backbone reference` export takes it from
    `--weights` or $AACLIP_WEIGHTS where it runs. The records files are not needed to score
    (the dataset names stay)."""
    d = cfg.to_dict()
    d["backbone"]["weights"] = None
    d["data"].update(train_records="", test_records=[], memory_records=[])
    return d


def without_absolute_paths(x):
    """`x` (JSON-like) with every absolute path reduced to its file name."""
    if isinstance(x, dict):
        return {k: without_absolute_paths(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [without_absolute_paths(v) for v in x]
    if isinstance(x, str) and os.path.isabs(x):
        return Path(x).name
    return x


def _write(
    detector: ExportedDetector,
    cfg,
    out: Path,
    description: str | None,
    backbone: str,
    onnx: bool,
    calibration: dict | None,
    checkpoint: str | Path | None,
    report: Callable[[str], None],
) -> None:
    from aaclip.methods import method_class

    method = detector.method
    _save_tensors(out / ADAPTER, method.adapter_state())
    _save_tensors(out / ANCHORS, {"anchors": detector.anchors})
    if detector.levels:
        memory = detector.memory_features()
        _save_tensors(out / MEMORY, {f"level_{i}": f for i, f in enumerate(memory)})
    identity = dict(method.backbone.identity)
    if backbone == "embed":
        _save_tensors(out / BACKBONE, method.clip.state_dict())
    cal_entry = None
    if calibration is not None:
        classes = calibration.get("classes", {})
        if detector.class_name in classes:
            cal_entry = without_absolute_paths(
                {
                    **{k: v for k, v in calibration.items() if k != "classes"},
                    "classes": {detector.class_name: classes[detector.class_name]},
                }
            )
            (out / CALIBRATION).write_text(json.dumps(cal_entry, indent=2, sort_keys=True))
        else:
            report(
                f"the calibration has no class {detector.class_name!r} (it has "
                f"{', '.join(map(repr, classes)) or 'none'}): the export's labels will be missing"
            )
    else:
        report(
            "the checkpoint has no calibration (`aaclip calibrate`): the export's labels and "
            "masks will be missing"
        )
    onnx_files: list[str] = []
    spec = method.input_spec()
    if onnx and detector.levels:
        raise ExportError(
            f"--onnx: a few-shot export ({detector.mode}) scores with a memory bank that is "
            "not traced to ONNX; export without --onnx (the PyTorch runtime)"
        )
    if onnx:
        onnx_files = [p.name for p in export_onnx(detector, out / ONNX, spec.image_size)]
    scoring = (
        "method"
        if method_class(method.name).score_rule is not Method.score_rule
        else detector.domain
    )
    manifest = {
        "format": FORMAT,
        "kind": "aaclip-export",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "method": method.name,
        "config": portable_config(cfg),
        "class_name": detector.class_name,
        "dataset": detector.dataset,
        "description": description,
        "domain": detector.domain,
        "mode": detector.mode,
        "has_masks": detector.has_masks,
        "input_spec": {
            "image_size": spec.image_size,
            "mean": list(spec.mean) if spec.mean is not None else None,
            "std": list(spec.std) if spec.std is not None else None,
            "resize": "bicubic to image_size x image_size (no crop), RGB, values / 255, "
            "then (x - mean) / std per channel; layout (B, 3, S, S) float32",
        },
        "outputs": {
            "maps": "(B, S, S) raw anomaly map by the method's per-image rule, float32",
            "scores": "(B,) raw image score by the method's per-image rule, float32",
        },
        "scoring": {
            "rule": scoring,
            "meaning": SCORING_RULES.get(scoring, f"{method.name}'s own (Method.score_rule)"),
        },
        "backbone": {"mode": backbone, "identity": identity},
        "checkpoint": (
            {"name": Path(checkpoint).name, "sha256": _sha256(Path(checkpoint))}
            if checkpoint is not None
            else None
        ),
        "calibration": CALIBRATION if cal_entry is not None else None,
        "onnx": {"file": ONNX, "input": ONNX_INPUT, "outputs": list(ONNX_OUTPUTS)}
        if onnx
        else None,
        "files": {
            p.name: _sha256(p) for p in sorted(out.iterdir()) if p.is_file() and p.name != MANIFEST
        },
    }
    if onnx and ONNX not in onnx_files:
        raise ExportError(f"{out}: the ONNX exporter wrote no {ONNX}")
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def export_checkpoint(
    checkpoint: str | Path,
    class_name: str,
    out: str | Path,
    *,
    description: str | None = None,
    domain: str | None = None,
    backbone: str = "embed",
    onnx: bool = False,
    weights: str | None = None,
    dataset: str | None = None,
    report: Callable[[str], None] | None = None,
    calibration: str | Path | None = None,
) -> Path:
    """`aaclip export`: a checkpoint and a class -> an export folder; the manifest's path.
    `calibration`: a calibration file (`aaclip calibrate --out`) instead of the one beside
    the checkpoint."""
    from aaclip import checkpoints as ck
    from aaclip.config import ExperimentConfig
    from aaclip.evaluate import load_methods

    meta = ck.read_meta(checkpoint)
    if "config" not in meta:
        raise ck.CheckpointMismatchError(f"{checkpoint}: no aaclip metadata; not our checkpoint")
    from aaclip.reference import Reference, scoring_mode

    cfg = ExperimentConfig.from_dict(meta["config"])
    if weights is not None:
        cfg.backbone.weights = weights
    reference = Reference.of_checkpoint(meta, cfg, str(checkpoint), report or _note)
    ref = reference.get(class_name) if reference is not None else None
    if ref is not None:
        domain = domain if domain is not None else ref.domain
        dataset = dataset if dataset is not None else ref.dataset
    domain = domain or "industrial"
    method = next(iter(load_methods(cfg, [checkpoint], torch.device("cpu")).values()))
    detector = detector_for(
        method, class_name, domain, description, dataset, ref, source=str(checkpoint)
    )
    detector.mode = scoring_mode(cfg, ref)
    return export_detector(
        detector,
        cfg,
        out,
        description=description,
        backbone=backbone,
        onnx=onnx,
        calibration=checkpoint_calibration(checkpoint, calibration),
        checkpoint=checkpoint,
        report=report,
    )
