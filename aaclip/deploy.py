"""Run an export (`aaclip.export`): check it, then score images with PyTorch or onnxruntime.

Every load checks the folder first: the manifest's format and package version must be this
package's, the manifest must be unedited, and every file must have the sha256 the manifest
lists; otherwise one line names the file and the reason (`ExportError`, exit status 2 in the
CLI). `aaclip predict --model DIR` writes the same overlays and CSV as predicting from the
checkpoint, with calibrated labels and masks when the export holds a calibration.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aaclip import __version__
from aaclip.export import (
    ADAPTER,
    ANCHORS,
    BACKBONE,
    CALIBRATION,
    FORMAT,
    MANIFEST,
    MEMORY,
    ONNX,
    ONNX_INPUT,
    ONNX_OUTPUTS,
    ExportedDetector,
    ExportError,
    _sha256,
    manifest_digest,
)
from aaclip.methods import ClassContext, InputSpec, Prediction

RUNTIMES = ("torch", "onnx")
Predictor = Callable[[torch.Tensor], Prediction]


def read_manifest(folder: str | Path) -> dict:
    """The manifest of an export folder, unchecked; one line when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"{folder}: no such export folder")
    path = folder / MANIFEST
    if not path.is_file():
        raise ExportError(f"{folder}: not an aaclip export (no {MANIFEST}); see `aaclip export`")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise ExportError(f"{path}: not valid JSON (tampered or corrupted); export again") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != "aaclip-export":
        raise ExportError(f"{path}: not an aaclip export manifest")
    return manifest


def verify(folder: str | Path) -> dict:
    """The manifest, once the export is known to be this package's and untouched."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.get("format") != FORMAT:
        raise ExportError(
            f"{folder}: export format {manifest.get('format')!r}; this aaclip reads {FORMAT}"
        )
    made = (manifest.get("versions") or {}).get("aaclip")
    if made != __version__:
        raise ExportError(
            f"{folder}: exported by aaclip {made}, this is aaclip {__version__}; export the "
            f"checkpoint again with this version (or install aaclip {made})"
        )
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        raise ExportError(f"{folder / MANIFEST}: edited after export (content hash differs)")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ExportError(f"{folder / MANIFEST}: lists no files")
    for name, digest in sorted(files.items()):
        if Path(name).name != name or name in (".", ".."):
            raise ExportError(f"{folder / MANIFEST}: file name {name!r} outside the folder")
        path = folder / name
        if not path.is_file():
            raise ExportError(f"{path}: missing (the manifest lists it); copy the whole folder")
        if _sha256(path) != digest:
            raise ExportError(
                f"{path}: sha256 differs from the manifest (tampered or corrupted); export again"
            )
    return manifest


def input_spec(manifest: dict) -> InputSpec:
    s = manifest["input_spec"]
    mean = tuple(s["mean"]) if s.get("mean") is not None else None
    std = tuple(s["std"]) if s.get("std") is not None else None
    return InputSpec(int(s["image_size"]), mean, std)


def context(manifest: dict) -> ClassContext:
    return ClassContext(
        manifest["class_name"],
        manifest.get("dataset"),
        manifest["domain"],
        bool(manifest.get("has_masks", True)),
    )


def calibration(folder: str | Path, manifest: dict):
    """The export's `Calibration` of its class, or None when it was exported without one."""
    from aaclip.calibration import calibrations_from_dict

    if not manifest.get("calibration"):
        return None
    data = json.loads((Path(folder) / CALIBRATION).read_text())
    return calibrations_from_dict(data).get(manifest["class_name"])


def _embedded_backbone(cfg, path: Path, identity: dict, device: torch.device):
    """The CLIP stored in the export, built on its architecture (the identity it was
    exported with is kept: the file is checked by its hash in the manifest)."""
    import open_clip
    from safetensors.torch import load_file

    from aaclip.backbone import Backbone, _quiet, get_tokenizer

    with _quiet("root"), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model(
            cfg.name,
            pretrained=None,
            force_image_size=cfg.image_size,
            force_quick_gelu=cfg.quick_gelu,
        )
    model.load_state_dict(load_file(str(path)), strict=True)
    model.requires_grad_(False).eval()
    return Backbone(model.to(device), get_tokenizer(cfg.name), dict(identity))


def load_torch(
    folder: str | Path,
    *,
    weights: str | None = None,
    device: str | torch.device | None = "cpu",
    manifest: dict | None = None,
) -> ExportedDetector:
    """The export as an `ExportedDetector` (PyTorch). `weights`: the backbone file of an
    export made with `--backbone reference` (else $AACLIP_WEIGHTS); checked by content hash."""
    from safetensors.torch import load_file

    from aaclip.backbone import build_backbone
    from aaclip.checkpoints import check_identity
    from aaclip.config import ExperimentConfig
    from aaclip.methods import create_method
    from aaclip.runtime import pick_device

    folder = Path(folder)
    manifest = manifest or verify(folder)
    dev = pick_device(device)
    cfg = ExperimentConfig.from_dict(manifest["config"])
    saved = manifest["backbone"]
    if saved["mode"] == "embed":
        backbone = _embedded_backbone(cfg.backbone, folder / BACKBONE, saved["identity"], dev)
    else:
        if weights is not None:
            cfg.backbone.weights = weights
        backbone = build_backbone(cfg.backbone, dev)
        check_identity(saved["identity"], backbone.identity, folder)
    method = create_method(cfg, dev, backbone)
    method.load_adapter_state(load_file(str(folder / ADAPTER)), str(folder / ADAPTER))
    anchors = load_file(str(folder / ANCHORS))["anchors"]
    memory = None
    if (folder / MEMORY).is_file() and MEMORY in manifest["files"]:  # few-shot
        stored = load_file(str(folder / MEMORY))
        memory = [stored[f"level_{i}"] for i in range(len(stored))]
    detector = ExportedDetector(
        method,
        anchors,
        manifest["class_name"],
        manifest["domain"],
        manifest.get("dataset"),
        bool(manifest.get("has_masks", True)),
        memory,
        manifest.get("mode", "zero-shot"),
    )
    return detector.to(dev).eval()


class OnnxDetector:
    """The export's `model.onnx` in an onnxruntime CPU session: images -> Prediction."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError(
                "onnxruntime is not installed: pip install 'aaclip[export]' (or use "
                "--runtime torch)"
            ) from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(Path(folder) / ONNX), options, providers=["CPUExecutionProvider"]
        )

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: images})
        return maps, scores

    def __call__(self, images: torch.Tensor) -> Prediction:
        x = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        maps, scores = self.run(x)
        return Prediction(torch.from_numpy(maps), torch.from_numpy(scores))


def pick_runtime(manifest: dict, runtime: str | None) -> str:
    """onnx when the export has an ONNX file (default), else torch; one line when impossible."""
    if runtime is None:
        return "onnx" if manifest.get("onnx") else "torch"
    if runtime not in RUNTIMES:
        raise ExportError(f"--runtime must be torch or onnx, got {runtime!r}")
    if runtime == "onnx" and not manifest.get("onnx"):
        raise ExportError("this export has no ONNX file (export with --onnx); use --runtime torch")
    return runtime


@dataclass
class Deployed:
    """A loaded export: the method's per-image rule on batches of preprocessed images."""

    predict: Predictor  # preprocessed images (B, 3, S, S) -> per-image (maps, scores)
    manifest: dict
    runtime: str
    device: torch.device  # where the images go


def load(
    folder: str | Path,
    runtime: str | None = None,
    *,
    weights: str | None = None,
    device: str | torch.device | None = None,
    threads: int | None = None,
) -> Deployed:
    """A checked export, ready to score preprocessed images with `runtime` (default: onnx
    when the export has an ONNX file, else torch)."""
    from aaclip.runtime import pick_device

    folder = Path(folder)
    manifest = verify(folder)
    runtime = pick_runtime(manifest, runtime)
    if weights is not None and manifest["backbone"]["mode"] == "embed":
        raise ExportError(f"{folder}: embeds its backbone; --weights is for --backbone reference")
    if runtime == "torch":
        dev = pick_device(device)
        detector = load_torch(folder, weights=weights, device=dev, manifest=manifest)
        return Deployed(detector.predict, manifest, runtime, dev)
    if device is not None and torch.device(device).type != "cpu":
        raise ExportError(f"--runtime onnx runs on the CPU; --device {device} is for torch")
    # the graph ends in the method's own per-image rule: every method's export runs here
    return Deployed(OnnxDetector(folder, threads), manifest, runtime, torch.device("cpu"))


def predict_model(
    folder: str | Path,
    inputs: list[str | Path],
    out_dir: str | Path,
    *,
    runtime: str | None = None,
    weights: str | None = None,
    device: str | None = None,
    overlays: bool = True,
    report: Callable[[str], None] | None = None,
) -> Path:
    """`aaclip predict --model DIR`: what `predict.predict_files` writes from the checkpoint
    (each image scored alone; calibrated score, label and mask when the export holds a
    calibration), from an export. Returns the CSV path."""
    from aaclip.predict import Detector, write_predictions

    model = load(folder, runtime, weights=weights, device=device)
    manifest = model.manifest
    detector = Detector.from_predictor(
        model.predict,
        input_spec(manifest),
        model.device,
        class_name=manifest["class_name"],
        domain=manifest["domain"],
        calibration=calibration(folder, manifest),
        source=folder,
        mode=manifest.get("mode", "zero-shot"),
    )
    return write_predictions(detector, inputs, out_dir, report=report, overlays=overlays)
