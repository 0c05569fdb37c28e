"""The reference normals a few-shot checkpoint is scored with, carried in its metadata.

A few-shot method (one with a `fit_memory`, run with `data.memory_records`: MVFA-AD,
ClipMPCAD) is evaluated with a memory bank fitted on k reference normal images per class.
A checkpoint of such a run stores, under the metadata key `reference`, each test set's
records of those normals (paths relative to their folder, as in the records file) with the
SHA-256 of every image, and per class its dataset, domain and whether its test set has masks
(the bank of a segmentation set and that of a classification-only set differ). Every exit
(`predict`, `calibrate`, `export`, the Python `Detector`) fits the same bank from the same
images before scoring, so a checkpoint scores as it was evaluated; an image that moved or
changed is refused in one line (`ReferenceError`), never silently replaced by zero-shot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

META_KEY = "reference"
VERSION = 1


class ReferenceError(ValueError):  # noqa: A001 (not the builtin: a one-line input error)
    """The reference normals of a few-shot checkpoint are missing or changed; one line."""


def uses_memory(cfg: Any) -> bool:
    """True when evaluating `cfg` fits a memory bank: the method has a `fit_memory` and the
    config names reference-normal records (`data.memory_records`)."""
    from aaclip.methods import Method, method_class

    own = method_class(cfg.method).fit_memory is not Method.fit_memory
    return own and any(getattr(cfg.data, "memory_records", ()) or ())


def scoring_mode(cfg: Any, reference: ReferenceClass | None = None) -> str:
    """What an exit prints as the mode that scored: "few-shot k=N" (a memory bank of N
    reference normals), "few-shot (no memory bank)" (a few-shot protocol whose rule needs no
    reference images, e.g. IQE-CLIP's), else "zero-shot"."""
    if reference is not None:
        return reference.mode
    if getattr(getattr(cfg, "model", None), "protocol", None) in ("few", "few_shot"):
        return "few-shot (no memory bank)"
    return "zero-shot"


def _sha256(path: Path) -> str:
    from aaclip import digests

    return digests.file_sha256(path)


def describe(cfg: Any) -> dict | None:
    """The `reference` metadata of a config (None when it is not few-shot): per test set
    with a memory file, its folder, dataset, domain and per class the normals with hashes."""
    if not uses_memory(cfg):
        return None
    from aaclip.evaluate import eval_sets

    sets = []
    for ts in eval_sets(cfg):
        if ts.memory_file is None:
            continue
        try:  # segmentation or classification-only, per class, from its test records
            tests = ts.records()
        except (OSError, ValueError):
            tests = []
        has_masks: dict[str, bool] = {}
        for r in tests:
            if r.label == 1:
                has_masks[r.class_name] = has_masks.get(r.class_name, True) and bool(r.mask_path)
        root = ts.memory_file.parent
        classes: dict[str, dict] = {}
        for r in ts.memory() or []:
            entry = classes.setdefault(
                r.class_name, {"has_masks": has_masks.get(r.class_name, True), "normals": []}
            )
            entry["normals"].append({"image": r.image_path, "sha256": _sha256(root / r.image_path)})
        if classes:
            sets.append(
                {
                    "folder": str(root),
                    "dataset": ts.dataset,
                    "domain": ts.domain,
                    "classes": classes,
                }
            )
    if not sets:
        return None
    return {"version": VERSION, "sets": sets}


@dataclass(frozen=True)
class ReferenceClass:
    """The reference normals of one class: where they are and what they must hash to."""

    class_name: str
    dataset: str | None
    domain: str
    has_masks: bool
    folder: Path
    normals: tuple[tuple[str, str], ...]  # (path relative to folder, sha256)

    @property
    def shots(self) -> int:
        return len(self.normals)

    @property
    def mode(self) -> str:
        return f"few-shot k={self.shots}"

    def images(self, spec: Any, device: torch.device, source: str = "checkpoint") -> torch.Tensor:
        """(k, 3, S, S) of the normals, prepared as `spec` says, after checking each file's
        hash; one line naming the first image that is missing or changed."""
        from aaclip import data

        records = []
        for rel, digest in self.normals:
            path = self.folder / rel
            if not path.is_file():
                raise ReferenceError(
                    f"{source}: reference normal {path} of class {self.class_name!r} "
                    f"({self.mode}) is missing; put the {self.shots} reference images back "
                    f"under {self.folder} (run from the folder it was trained in)"
                )
            if _sha256(path) != digest:
                raise ReferenceError(
                    f"{source}: reference normal {path} of class {self.class_name!r} "
                    f"({self.mode}) changed (sha256 {digest[:12]} expected); restore it, "
                    "or train and evaluate again with the new images"
                )
            records.append(data.Record(rel, 0, self.class_name))
        ds = data.RecordDataset(records, self.folder, spec.image_size, "none", spec.mean, spec.std)
        return torch.stack([ds[i]["image"] for i in range(len(ds))]).to(device)


class Reference:
    """The reference normals of a few-shot checkpoint, by class."""

    def __init__(self, meta: dict, source: str = "checkpoint") -> None:
        self.source = source
        self.classes: dict[str, ReferenceClass] = {}
        for s in meta.get("sets", []):
            for name, entry in s["classes"].items():
                self.classes.setdefault(
                    name,
                    ReferenceClass(
                        name,
                        s.get("dataset"),
                        s.get("domain", "industrial"),
                        bool(entry.get("has_masks", True)),
                        Path(s["folder"]),
                        tuple((n["image"], n["sha256"]) for n in entry["normals"]),
                    ),
                )

    @classmethod
    def of_checkpoint(
        cls,
        meta: dict,
        cfg: Any,
        source: str,
        report: Callable[[str], None] | None = None,
    ) -> Reference | None:
        """The reference of a checkpoint's metadata; None for a zero-shot checkpoint. One
        made before references were stored is described from its config's records now (the
        images cannot be checked against evaluation time: one note says so)."""
        if not uses_memory(cfg):
            return None
        stored = meta.get(META_KEY)
        if stored is None:
            try:
                stored = describe(cfg)
            except (OSError, ValueError) as err:
                raise ReferenceError(
                    f"{source}: a few-shot checkpoint without its reference normals, and its "
                    f"config's data.memory_records cannot be read ({' '.join(str(err).split())})"
                ) from None
            if report is not None:
                report(
                    f"{source} stores no hashes of its reference normals (made before they "
                    "were stored): fitted the few-shot memory on data.memory_records as found"
                )
        if not stored or not stored.get("sets"):
            return None
        return cls(stored, source)

    def get(self, class_name: str) -> ReferenceClass:
        """The class's reference normals; one line naming the classes it has otherwise."""
        if class_name not in self.classes:
            shots = sorted({c.shots for c in self.classes.values()})
            raise ReferenceError(
                f"{self.source}: a few-shot checkpoint (k={'/'.join(map(str, shots))}) holds "
                f"reference normals of class{'es' * (len(self.classes) > 1)} "
                f"{', '.join(sorted(self.classes))} only, not {class_name!r}: name one of them "
                "with --class-name (its memory bank is what it was evaluated with)"
            )
        return self.classes[class_name]
