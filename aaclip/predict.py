"""Apply a trained checkpoint (any method) to a user's own images, one image at a time.

`Detector` is the public entry point (the CLI's `predict` and `calibrate` use it too):

    det = Detector.from_checkpoint("model.safetensors")          # + its calibration, if any
    r = det.predict(Image.open("photo.png"), description="bottle")
    r.score, r.normalised, r.label, r.map, r.mask                # raw, calibrated, ...

Every image is scored alone (a batch of one): its raw score and map never depend on the
other images of a call (the released V-V attention even mixes the images of a batch). Raw
values are the method's own score rule (`Method.score_rule`) on the image alone, before any
per-class normalisation: the very terms `aaclip test` combines after min-max normalising
them over a class (AA-CLIP industrial: 0.5 * max(map) + 0.5 * p; medical: max(map); MVFA
few-shot: the text and memory maps blended ...); the map is resized to the image's own size.
A few-shot checkpoint fits the memory bank it was evaluated with (`aaclip.reference`: its
reference normals, checked by content hash) before scoring; `Result.mode` says which mode
scored ("zero-shot" or "few-shot k=N"). With a calibration stored beside
the checkpoint (`aaclip calibrate`, `aaclip.calibration`) each image also gets a normalised
score (threshold at 0.5), a label and a binary mask; without one, raw values only.
`aaclip test` keeps the released per-class test-set normalisation for the paper tables.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from aaclip import checkpoints as ck
from aaclip import data
from aaclip.calibration import Calibration, load_calibration
from aaclip.config import ExperimentConfig
from aaclip.fileio import IMAGE_SUFFIXES, atomic_write, atomic_write_text
from aaclip.methods import ClassContext, InputSpec, Method, Prediction
from aaclip.reference import Reference, ReferenceClass, scoring_mode
from aaclip.runtime import full_precision, pick_device
from aaclip.transforms import image_to_tensor

RECORDS_SUFFIX = ".jsonl"
# `predict` marks every folder it writes; such a folder is never read back as input.
OUTPUT_MARKER = ".aaclip-predictions"
DOMAINS = ("industrial", "medical")

__all__ = [
    "Detector",
    "Result",
    "Target",
    "collect_images",
    "predict_files",
    "write_predictions",
]


def is_output_folder(folder: Path) -> bool:
    """A folder `predict` wrote: its marker, or (older versions) scores.csv beside
    overlays/ or masks/."""
    return (folder / OUTPUT_MARKER).is_file() or (
        (folder / "scores.csv").is_file()
        and ((folder / "overlays").is_dir() or (folder / "masks").is_dir())
    )


def _files_under(folder: Path, skipped: list[Path], current) -> list[Path]:
    """Every file under `folder`, sorted, leaving out the output folders of earlier
    `predict` runs (listed in `skipped`; `current(path)`: the output folder of this run,
    counted by the caller)."""
    out: list[Path] = []
    for here, dirs, files in os.walk(folder):
        kept = []
        for d in sorted(dirs):
            if is_output_folder(Path(here) / d) and not current(Path(here) / d):
                skipped.append(Path(here) / d)
            else:
                kept.append(d)
        dirs[:] = kept
        out.extend(Path(here) / f for f in files)
    return sorted(out)


def collect_images(
    inputs: list[str | Path],
    *,
    exclude: Sequence[str | Path] = (),
    report: Callable[[str], None] | None = None,
) -> list[Path]:
    """Image files from a mix of files and folders (folders searched recursively, sorted).

    Nothing under an `exclude` folder (the output folder) or under any folder an earlier
    `predict` wrote (`is_output_folder`) is ever read back as input. Files and folders
    alike take the suffixes of `fileio.IMAGE_SUFFIXES`: in folders, other files (other
    suffixes, hidden files) are skipped with one count; a named one is skipped with a
    note. Every image is checked (`data.unreadable_images`); a corrupt one is reported and
    skipped, so the good images are still scored. `report` gets each one-line note
    (default: printed to stderr).
    """
    report = report or _note
    skip = [Path(e).resolve() for e in exclude]

    def excluded(path: Path) -> bool:
        resolved = path.resolve()
        return any(resolved == s or s in resolved.parents for s in skip)

    found: list[Path] = []
    others: dict[str, int] = {}
    ignored = 0
    earlier: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir() and is_output_folder(item) and not excluded(item):
            earlier.append(item)
        elif item.is_dir():
            for p in _files_under(item, earlier, excluded):
                if not p.is_file():
                    continue
                if excluded(p):
                    ignored += p.name != OUTPUT_MARKER
                elif p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
                    found.append(p)
                else:
                    kind = p.suffix.lower() if p.suffix and not p.name.startswith(".") else "hidden"
                    others[kind] = others.get(kind, 0) + 1
        elif item.is_file():
            if excluded(item):
                ignored += 1
            elif item.suffix.lower() not in IMAGE_SUFFIXES:
                report(
                    f"skipped {item}: not an image file ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            else:
                found.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such image or folder")
    found = list(dict.fromkeys(found))
    if ignored:
        report(f"skipped {ignored} file{'s' * (ignored > 1)} in the output folder {skip[0]}")
    for folder in dict.fromkeys(earlier):
        report(f"skipped {folder}: an output folder of `aaclip predict`, never read as input")
    if others:
        n = sum(others.values())
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(others.items()))
        report(
            f"skipped {n} file{'s' * (n > 1)} that "
            + ("are not images" if n > 1 else "is not an image")
            + f" ({kinds})"
        )
    bad = data.unreadable_images(found)
    for path, why in bad.items():
        report(f"skipped {path}: unreadable image ({why})")
    good = [p for p in found if str(p) not in bad]
    if not good:
        raise FileNotFoundError(
            f"no readable images ({', '.join(sorted(IMAGE_SUFFIXES))}) in "
            f"{', '.join(map(str, inputs))}"
        )
    return good


def _note(message: str) -> None:
    print(f"aaclip: note: {message}", file=sys.stderr)


def resize_map(raw_map: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (S, S) map resized bilinearly to an image's own (width, height): (H, W) float32.

    The model saw the image squashed to S x S (no crop), so this restores its aspect.
    """
    t = torch.as_tensor(np.asarray(raw_map, dtype=np.float32) if not torch.is_tensor(raw_map)
                        else raw_map.float().cpu())  # fmt: skip
    w, h = size
    if tuple(t.shape) == (h, w):
        return t.numpy().astype(np.float32, copy=True)
    out = F.interpolate(t[None, None], size=(h, w), mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


@dataclass(frozen=True)
class Target:
    """What the images show: the calibration key, the text of the prompts, the domain."""

    key: str  # the class name (calibration key)
    class_name: str
    description: str | None  # replaces the class's own text when given
    domain: str
    calibration: Calibration | None
    dataset: str | None = None  # the dataset of its text and reference normals, when known
    reference: ReferenceClass | None = None  # few-shot: the normals of its memory bank
    fixed_mode: str | None = None  # an export's mode, from its manifest

    @property
    def mode(self) -> str:
        """The scoring mode: zero-shot, or few-shot k=N (a memory bank of N normals)."""
        if self.fixed_mode is not None:
            return self.fixed_mode
        return self.reference.mode if self.reference is not None else "zero-shot"


@dataclass
class Result:
    """One image scored alone.

    `score` and `map` are raw (the method's outputs, no normalisation; `map` at the image's
    own size, (H, W)). With a calibration: `normalised` in [0, 1] (the image threshold is
    0.5), `label` ("anomalous" when `normalised > 0.5`, else "normal"), `mask` (H, W) bool
    (raw map above the pixel threshold) and `normalised_map`; without one these are None.
    """

    image: str
    class_name: str
    size: tuple[int, int]  # (width, height)
    score: float
    map: np.ndarray
    normalised: float | None = None
    label: str | None = None
    mask: np.ndarray | None = None
    normalised_map: np.ndarray | None = None
    calibration: Calibration | None = None
    mode: str = "zero-shot"  # or "few-shot k=N": the memory bank of N reference normals

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    @property
    def anomalous(self) -> bool | None:
        return None if self.label is None else self.label == "anomalous"


class Detector:
    """A checkpoint's method on one device, with the checkpoint's calibration when it has one.

    `predict(image)` scores one image alone; `raw(image, target)` gives the raw (score, map at
    the model's input size) that `aaclip calibrate` calibrates on. With a `reference` (a
    few-shot checkpoint) each class's context holds the memory bank fitted on its reference
    normals, as evaluation fits it; a class without reference normals is refused.
    """

    def __init__(
        self,
        method: Method,
        checkpoint: str | Path | None = None,
        calibrations: dict[str, Calibration] | None = None,
        reference: Reference | None = None,
    ) -> None:
        self.method = method.eval()
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.calibrations = calibrations
        self.reference = reference
        self.spec = method.input_spec()
        self.fixed: tuple[str, str] | None = None  # (class, domain) baked in: an export
        self.fixed_mode: str | None = None  # an export's "zero-shot" / "few-shot k=N"
        self.base_mode = "zero-shot"  # without reference normals (the config's protocol)
        self._contexts: dict[tuple, ClassContext] = {}

    @classmethod
    def from_predictor(
        cls,
        predict: Callable[[torch.Tensor], Prediction],
        spec: InputSpec,
        device: torch.device,
        *,
        class_name: str,
        domain: str,
        calibration: Calibration | None = None,
        source: str | Path | None = None,
        mode: str = "zero-shot",
    ) -> Detector:
        """A detector of one class whose context is baked into `predict` (preprocessed images
        (B, 3, S, S) -> the method's per-image rule as a Prediction: maps and scores), e.g.
        an `aaclip export` run by PyTorch or onnxruntime: images are read, scored and
        written exactly as from a checkpoint. `mode`: the export's ("few-shot k=N")."""
        det = cls(
            _Baked(predict, spec, device),
            source,
            {class_name: calibration} if calibration else None,
        )
        det.fixed = (class_name, domain)
        det.fixed_mode = mode
        return det

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        *,
        device: str | torch.device | None = None,
        weights: str | None = None,
        calibration: bool | str | Path = True,
        report: Callable[[str], None] | None = None,
    ) -> Detector:
        """Load a checkpoint (any method), its reference normals when it is few-shot
        (`aaclip.reference`) and, with `calibration`, its stored calibration: True, the one
        beside it; a path, that file (`aaclip calibrate --out`)."""
        from aaclip.evaluate import load_methods

        meta = ck.read_meta(checkpoint)  # one line when the file is not a checkpoint
        if "config" not in meta:
            raise ck.CheckpointMismatchError(
                f"{checkpoint}: no aaclip metadata; not our checkpoint"
            )
        cfg = ExperimentConfig.from_dict(meta["config"])
        if weights is not None:
            cfg.backbone.weights = weights
        reference = Reference.of_checkpoint(meta, cfg, str(checkpoint), report or _note)
        method = next(iter(load_methods(cfg, [checkpoint], pick_device(device)).values()))
        path = None if isinstance(calibration, bool) else calibration
        calibrations = load_calibration(checkpoint, path) if calibration else None
        det = cls(method, checkpoint, calibrations, reference)
        det.base_mode = scoring_mode(cfg)
        return det

    @property
    def device(self) -> torch.device:
        return self.method.device

    @property
    def image_size(self) -> int:
        return self.spec.image_size

    # ------------------------------------------------------------------ what the images show
    def target(
        self,
        class_name: str | None = None,
        description: str | None = None,
        domain: str | None = None,
        dataset: str | None = None,
    ) -> Target:
        """The class of the images: by `class_name` (its own text, e.g. a records class) or by
        `description` (the text of the prompts, also its calibration key). With neither, the
        single calibrated class. `domain` defaults to the calibration's, else (few-shot) the
        reference set's, else industrial; `dataset` (its class text) to the reference set's.
        A few-shot checkpoint refuses a class it holds no reference normals of."""
        if domain is not None and domain not in DOMAINS:
            raise ValueError(f"domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
        cals = self.calibrations or {}
        if self.fixed is not None:  # the class and domain are baked in
            name, fixed_domain = self.fixed
            return Target(
                name, name, None, fixed_domain, cals.get(name), fixed_mode=self.fixed_mode
            )
        key = class_name or description
        if key is None:
            if len(cals) != 1:
                known = f" (calibrated: {', '.join(sorted(cals))})" if cals else ""
                raise ValueError(
                    "say what the images show: --class-name NAME or --description TEXT" + known
                )
            key = next(iter(cals))
        cal = cals.get(key)
        stored = cal.extra if cal is not None else {}
        if cal is not None:  # the calibration holds for the text it was made with
            class_name, description = stored.get("class_name", key), stored.get("description")
            dataset = dataset if dataset is not None else stored.get("dataset")
        stored_domain = stored.get("domain")
        if domain is not None and stored_domain is not None and domain != stored_domain:
            raise ValueError(
                f"class {key!r} was calibrated with --domain {stored_domain}, not {domain}: "
                "pass the same domain, or calibrate again"
            )
        ref = self.reference.get(class_name or key) if self.reference is not None else None
        if ref is not None:
            domain = domain or stored_domain or ref.domain
            dataset = dataset if dataset is not None else ref.dataset
        domain = domain or stored_domain or "industrial"
        mode = None if ref is not None else self.base_mode
        return Target(key, class_name or key, description, domain, cal, dataset, ref, mode)

    def context(self, target: Target) -> ClassContext:
        """The method's per-class context (text anchors, few-shot memory bank ...), built
        once per target exactly as evaluation builds it."""
        k = (target.class_name, target.description, target.domain, target.dataset)
        if k not in self._contexts:
            ref = target.reference
            ctx = self.method.prepare_class(
                target.class_name,
                target.dataset,
                target.domain,
                ref.has_masks if ref is not None else True,
                description=target.description,
            )
            if ref is not None:
                source = str(self.checkpoint) if self.checkpoint else "checkpoint"
                ctx = self.method.fit_memory(ctx, ref.images(self.spec, self.device, source))
            self._contexts[k] = ctx
        return self._contexts[k]

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def raw_prediction(self, image: Image.Image, target: Target) -> Prediction:
        """The method's raw outputs (`Method.predict`) of one image alone, on the CPU."""
        x = image_to_tensor(
            image, self.spec.image_size, self.spec.mean, self.spec.std, self.method.dtype
        )
        pred = self.method.predict(x[None].to(self.device), self.context(target))
        return pred.to(torch.device("cpu"))

    @torch.no_grad()
    def raw(self, image: Image.Image, target: Target) -> tuple[float, torch.Tensor]:
        """Raw image score and raw map (S, S) at the model's input size, on the CPU: the
        method's score rule (`Method.score_rule`) on the image alone."""
        pred = self.raw_prediction(image, target)
        maps, scores = self.method.score_rule(pred, self.context(target))
        return float(scores[0]), full_precision(maps[0])

    def predict(
        self,
        image: Image.Image | str | Path,
        *,
        class_name: str | None = None,
        description: str | None = None,
        domain: str | None = None,
        target: Target | None = None,
    ) -> Result:
        """Score one image (a PIL image or a file): raw score and map, and with a calibration
        of its class the normalised score, label and mask. See `target` for the class."""
        name = str(image) if isinstance(image, str | Path) else "<image>"
        if isinstance(image, str | Path):
            image = data.load_image(image)
        image = _rgb(image)
        target = target or self.target(class_name, description, domain)
        score, small = self.raw(image, target)
        full = resize_map(small, image.size)
        result = Result(name, target.key, image.size, score, full, mode=target.mode)
        cal = target.calibration
        if cal is not None:
            result.calibration = cal
            result.normalised = float(cal.normalise_score(score))
            result.label = "anomalous" if cal.label(score) else "normal"
            result.mask = cal.mask(full)
            result.normalised_map = cal.normalise_map(full).astype(np.float32)
        return result


class _Baked:
    """A predictor with its class text baked in, as the part of a `Method` a Detector uses."""

    name = "export"

    def __init__(self, predict, spec: InputSpec, device: torch.device) -> None:
        self._predict, self._spec, self._device = predict, spec, torch.device(device)

    def eval(self) -> _Baked:
        return self

    def input_spec(self) -> InputSpec:
        return self._spec

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32  # exports are float32

    def prepare_class(self, class_name, dataset, domain, has_masks=True, description=None):
        return ClassContext(class_name, dataset, domain)

    def predict(self, images: torch.Tensor, ctx: ClassContext) -> Prediction:
        return self._predict(images)

    def score_rule(self, pred: Prediction, ctx: ClassContext, norm=None):
        """An export's outputs are already the method's per-image rule."""
        return pred.maps, pred.scores


def _rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, as `data.load_image` reads files (16-bit and float modes rescaled)."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        image = Image.fromarray(data._to_uint8(np.asarray(image), image.mode))
    return image.convert("RGB") if image.mode != "RGB" else image


# --------------------------------------------------------------------------- predict_files


@dataclass(frozen=True)
class _Item:
    path: Path
    class_name: str | None = None  # from records
    mask_path: Path | None = None  # ground truth, from records
    label: int | None = None  # ground truth, from records


def _inputs(
    inputs: Sequence[str | Path], out_dir: Path, report: Callable[[str], None]
) -> list[_Item]:
    """Images of folders/files, and the records of `.jsonl` files (class and ground truth)."""
    items: list[_Item] = []
    plain: list[str | Path] = []

    def flush() -> None:  # never re-read our own overlays
        if plain:
            items.extend(_Item(p) for p in collect_images(plain, exclude=[out_dir], report=report))
            plain.clear()

    for path in map(Path, inputs):
        if not str(path).endswith(RECORDS_SUFFIX):
            plain.append(path)
            continue
        flush()
        root = path.parent
        for r in data.load_records(path, require_masks=False):
            mask = root / r.mask_path if r.mask_path else None
            items.append(_Item(root / r.image_path, r.class_name, mask, r.label))
    flush()
    return items


def _truth(item: _Item, size: tuple[int, int]) -> np.ndarray | None:
    if item.label is None:
        return None
    if item.mask_path is None:
        return np.zeros(size[::-1], bool)
    mask = data._open(item.mask_path, "mask")
    a = np.asarray(mask.convert("L")) > 0
    if a.shape != size[::-1]:
        a = np.asarray(Image.fromarray(a).resize(size, Image.Resampling.NEAREST))
    return a


def predict_files(
    checkpoint: str | Path,
    inputs: list[str | Path],
    description: str | None = None,
    out_dir: str | Path = "predictions",
    domain: str | None = None,
    weights: str | None = None,
    device: str | None = None,
    class_name: str | None = None,
    report: Callable[[str], None] | None = None,
    overlays: bool = True,
    calibration: str | Path | None = None,
) -> Path:
    """Score images one by one; write `scores.csv`, `overlays/*.png` and, when calibrated
    (beside the checkpoint, or the file `calibration`),
    `masks/*.png` (binary, at each image's own size); return the CSV.

    Inputs are image files, folders and records files (`.jsonl`: each image is scored as its
    record's class, and the overlay shows the ground-truth mask). An image's row is the same
    whatever other images share the call.
    """
    det = Detector.from_checkpoint(
        checkpoint, device=device, weights=weights, calibration=calibration or True,
        report=report,
    )  # fmt: skip
    return write_predictions(
        det,
        inputs,
        out_dir,
        class_name=class_name,
        description=description,
        domain=domain,
        report=report,
        overlays=overlays,
    )


def write_predictions(
    det: Detector,
    inputs: list[str | Path],
    out_dir: str | Path = "predictions",
    *,
    class_name: str | None = None,
    description: str | None = None,
    domain: str | None = None,
    report: Callable[[str], None] | None = None,
    overlays: bool = True,
) -> Path:
    """What `predict` writes for a detector (from a checkpoint or an export): each image
    scored alone, `scores.csv`, `masks/*.png` when calibrated, `overlays/*.png`."""
    from aaclip import overlays as ov

    report = report or _note
    out_dir = Path(out_dir)
    items = _inputs(inputs, out_dir, report)
    _remove_previous(out_dir)
    atomic_write_text(out_dir / OUTPUT_MARKER, "written by `aaclip predict`; never read as input\n")
    targets: dict[str | None, Target] = {}
    for cls in dict.fromkeys(i.class_name for i in items):
        own = cls is not None and class_name is None and description is None
        targets[cls] = (
            det.target(cls, None, domain) if own else det.target(class_name, description, domain)
        )
    _report_uncalibrated(det, list(targets.values()), report)
    rows = []
    for k, item in enumerate(items):
        image = data.load_image(item.path)
        result = det.predict(image, target=targets[item.class_name])
        result.image = str(item.path)
        name = f"{k:04d}_{item.path.stem}.png"
        row = {
            "image": str(item.path),
            "class": result.class_name,
            "mode": result.mode,
            "raw_score": f"{result.score:.6g}",
            "score": "" if result.normalised is None else f"{result.normalised:.4f}",
            "label": result.label or "",
        }
        if item.label is not None:
            row["true_label"] = "anomalous" if item.label else "normal"
        if result.mask is not None:
            atomic_write(out_dir / "masks" / name, _png(result.mask))
            row["mask"] = f"masks/{name}"
        if overlays:
            fig = ov.figure(image, result, _truth(item, result.size), row.get("true_label"))
            ov.save(fig, out_dir / "overlays" / name)
            row["overlay"] = f"overlays/{name}"
        rows.append(row)
    csv_path = out_dir / "scores.csv"
    atomic_write_text(csv_path, _csv(rows))
    return csv_path


def _remove_previous(out_dir: Path) -> None:
    """Remove the masks and overlays a previous run listed in `out_dir/scores.csv`, so the
    folder never mixes two runs (files the CSV does not list are left alone)."""
    old = out_dir / "scores.csv"
    if not old.is_file():
        return
    try:
        with open(old, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return
    for row in rows:
        for key, folder in (("mask", "masks"), ("overlay", "overlays")):
            name = Path(row.get(key) or "")
            if name.parent == Path(folder) and name.suffix == ".png":
                (out_dir / name).unlink(missing_ok=True)


def _report_uncalibrated(det: Detector, targets: list[Target], report) -> None:
    missing = [t.key for t in targets if t.calibration is None]
    if not missing:
        return
    name = det.checkpoint.name if det.checkpoint else "this model"
    how = f"`aaclip calibrate --checkpoint {det.checkpoint} --normal NORMAL_IMAGES`"
    if det.fixed is not None:
        report(
            f"no calibration in the export {name} (calibrate its checkpoint with `aaclip "
            "calibrate`, then export again): raw scores only, no label"
        )
    elif not det.calibrations:
        report(f"no calibration exists for {name} ({how} makes one): raw scores only, no label")
    else:
        report(
            f"no calibration for class{'es' * (len(missing) > 1)} "
            f"{', '.join(repr(m) for m in missing)} of {name} (calibrated: "
            f"{', '.join(sorted(det.calibrations))}): raw scores only, no label"
        )


def _png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255, mode="L").save(buf, "PNG")
    return buf.getvalue()


def _csv(rows: list[dict]) -> str:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
