"""Readable configs: one dataclass per concern; the `model` section belongs to the method.

`ExperimentConfig` holds the generic sections (backbone, train, eval, data). Its `model`
section is the config dataclass of the method named by `method` (each method module defines
its own `Config` with its released defaults, switches and stage schedule, plus its presets).
Every switch that reproduces a known defect of a released code defaults to the released
behaviour; the fixed behaviour is one override away.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class BackboneConfig:
    name: str = "ViT-L-14-336"  # open_clip architecture, or a tiny test config (aaclip-tiny)
    weights: str | None = None  # local file; None -> $AACLIP_WEIGHTS, else random init
    image_size: int = 518  # input size; positional embedding resized to it
    quick_gelu: bool = False  # released code builds plain GELU although OpenAI trained QuickGELU
    precision: str = "fp32"  # fp64 (smoke: same digits on any CPU) | fp32 | bf16 (GPU autocast)
    require_weights: bool = False  # paper: refuse to run on a random initialisation


@dataclass
class TrainConfig:
    seed: int = 111  # adapter init and every epoch's shuffling and augmentation
    shots: int | None = None  # None = full-shot, else k-shot sampled from the training records
    num_workers: int = 0  # training loader processes
    max_epochs: int | None = None  # caps every stage (quick runs, ablations); None = as scheduled


@dataclass
class EvalConfig:
    batch_size: int = 16  # evaluation batch
    epoch: int | None = None  # checkpoint `test` scores (last stage); None -> its last epoch
    num_workers: int = 0  # evaluation loader processes


@dataclass
class DataConfig:
    train_records: str = "data/VisA/test.jsonl"  # JSONL records the method trains on
    train_dataset: str = "VisA"  # its name (description table lookup)
    test_records: tuple[str, ...] = ("data/MVTec/test.jsonl",)  # one JSONL per test set
    test_datasets: tuple[str, ...] = ("MVTec",)  # their names, same order
    test_domains: tuple[str, ...] = ()  # per test set; empty -> dataset table (else industrial)
    # Few-shot: per test set, a records file whose normal images of each class are the
    # reference normals a method's memory bank is fitted on (`Method.fit_memory`); empty
    # (or "" for a set) -> none, zero-shot scoring.
    memory_records: tuple[str, ...] = ()


@dataclass
class ExperimentConfig:
    method: str = "aaclip"
    profile: str = "paper"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    model: Any = None  # the method's Config; None -> its defaults
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if self.model is None:
            from aaclip.methods import config_class

            self.model = config_class(self.method)()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> ExperimentConfig:
        from aaclip.methods import config_class

        top = _migrate(dict(d))
        parts = {
            "backbone": BackboneConfig,
            "model": config_class(top.get("method", "aaclip")),
            "train": TrainConfig,
            "eval": EvalConfig,
            "data": DataConfig,
        }
        for key, kind in parts.items():
            if key in top:
                top[key] = _build(kind, top[key])
        return _build(cls, top)

    @classmethod
    def load(cls, path: str | Path) -> ExperimentConfig:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: not a valid aaclip config: {err}") from None


def _build(kind: type, values: dict) -> Any:
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {kind.__name__} keys: {sorted(unknown)}; known: {sorted(known)}")
    return kind(**{k: _tuples(v) for k, v in values.items()})


def _tuples(v):
    return tuple(v) if isinstance(v, list) else v


# Configs written before the Method contract (0.1.0) kept AA-CLIP's stage schedule in `train`
# and the evaluation fields at the top level; they are moved to where they live now.
_OLD_SCHEDULE_KEYS = (
    "stage1_epochs", "stage1_batch_size", "stage1_lr", "stage2_epochs", "stage2_batch_size",
    "stage2_lr", "betas", "milestones", "gamma",
)  # fmt: skip


def _migrate(top: dict) -> dict:
    train = dict(top.get("train", {}))
    if (
        not any(k in train for k in (*_OLD_SCHEDULE_KEYS, "eval_epoch"))
        and "eval_batch_size" not in top
    ):
        return top
    model = dict(top.get("model", {}))
    for key in _OLD_SCHEDULE_KEYS:
        if key in train:
            model[key] = train.pop(key)
    ev = dict(top.get("eval", {}))
    if "eval_epoch" in train:
        ev["epoch"] = train.pop("eval_epoch")
    if "eval_batch_size" in top:
        ev["batch_size"] = top.pop("eval_batch_size")
    ev.setdefault("num_workers", train.get("num_workers", 0))
    return {**top, "train": train, "model": model, "eval": ev}


# --------------------------------------------------------------------------- shared presets
PAPER_TARGETS = (
    "MVTec", "BTAD", "MPDD", "Brain", "Liver", "Retina",
    "Colon_clinicDB", "Colon_colonDB", "Colon_Kvasir", "Colon_cvc300",
)  # fmt: skip


def paper_data(data_root: str = "data") -> DataConfig:
    """AA-CLIP's cross-dataset protocol: VisA (full-shot) -> the ten zero-shot targets.

    Each dataset's records are expected at `<data_root>/<Name>/test.jsonl` (what the
    converters in data_prep/ write); override `data.test_records` to test on fewer.
    """
    return DataConfig(
        train_records=f"{data_root}/VisA/test.jsonl",
        train_dataset="VisA",
        test_records=tuple(f"{data_root}/{name}/test.jsonl" for name in PAPER_TARGETS),
        test_datasets=PAPER_TARGETS,
    )


def smoke_data(data_root: str = "data/synthetic") -> DataConfig:
    """The embedded synthetic dataset: training classes, then held-out industrial and medical."""
    return DataConfig(
        train_records=f"{data_root}/train.jsonl",
        train_dataset="synthetic",
        test_records=(f"{data_root}/industrial_test.jsonl", f"{data_root}/medical_test.jsonl"),
        test_datasets=("synthetic-industrial", "synthetic-medical"),
        test_domains=("industrial", "medical"),
    )


def smoke_backbone() -> BackboneConfig:
    """Tiny random CLIP at 128 px in float64: proves the pipeline in minutes on a CPU, and
    every CPU computes the same reported digits (float32 kernels differ by ISA)."""
    return BackboneConfig(name="aaclip-tiny", image_size=128, precision="fp64")


def paper_experiment(
    method: str, model: Any, data_root: str = "data", **sections
) -> ExperimentConfig:
    """A `paper` profile: real weights required, AA-CLIP's cross-dataset data unless given."""
    sections.setdefault("backbone", BackboneConfig(require_weights=True))
    sections.setdefault("data", paper_data(data_root))
    return ExperimentConfig(method=method, profile="paper", model=model, **sections)


def smoke_experiment(
    method: str, model: Any, data_root: str = "data/synthetic", **sections
) -> ExperimentConfig:
    """A `smoke` profile: the tiny random backbone on the embedded dataset."""
    sections.setdefault("backbone", smoke_backbone())
    sections.setdefault("eval", EvalConfig(batch_size=32))
    sections.setdefault("data", smoke_data(data_root))
    return ExperimentConfig(method=method, profile="smoke", model=model, **sections)


def profiles(method: str = "aaclip") -> list[str]:
    """The presets a method defines (e.g. paper, smoke)."""
    from aaclip.methods import method_class

    return sorted(method_class(method).PRESETS)


def preset(name: str, method: str = "aaclip", **kwargs) -> ExperimentConfig:
    """A method's named preset, e.g. `preset("smoke")` or `preset("paper", "dpclip")`."""
    from aaclip.methods import method_class

    presets = method_class(method).PRESETS
    if name not in presets:
        raise ValueError(f"unknown profile {name!r} for {method}; choose from {sorted(presets)}")
    return presets[name](**kwargs)


def switch_method(cfg: ExperimentConfig, method: str) -> ExperimentConfig:
    """The same experiment (backbone, data, train, eval) for another method: its `model`
    section starts from that method's defaults, keeping the fields both methods share (e.g.
    `class_descriptions`)."""
    from aaclip.methods import config_class

    kind = config_class(method)
    names = {f.name for f in dataclasses.fields(kind)}
    shared = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k in names}
    d = cfg.to_dict()
    d.update(method=method, model=shared)
    return ExperimentConfig.from_dict(d)


def apply_overrides(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Apply `section.key=value` strings (values parsed as JSON, else kept as text)."""
    d = cfg.to_dict()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        if key == "method":
            raise ValueError(
                f"override {item!r}: the method is chosen with --method (or preset(profile, "
                "method)), which also resets the model section"
            )
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node, owner = d, cfg
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise ValueError(f"override {item!r}: no config section {p!r}")
            node, owner = node[p], getattr(owner, p, None)
        if leaf not in node:
            raise ValueError(f"override {item!r}: unknown key {leaf!r}; known: {sorted(node)}")
        if dataclasses.is_dataclass(owner):
            value = checked_value(key, raw, value, _field_types(type(owner)).get(leaf))
        node[leaf] = value
    return ExperimentConfig.from_dict(d)


def _field_types(kind: type) -> dict[str, Any]:
    """The resolved type of every field of a config dataclass ({} if they cannot be read)."""
    import typing

    try:
        return typing.get_type_hints(kind)
    except Exception:  # an annotation that does not resolve: no checking
        return {}


def _type_name(hint: Any) -> str:
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin in (tuple, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} ({', '.join(_type_name(a) for a in args)})"
    return getattr(hint, "__name__", str(hint))


def _fits(value: Any, hint: Any) -> tuple[bool, Any]:
    """(whether `value` has type `hint`, the value as the field holds it)."""
    import types
    import typing

    if hint is Any or hint is None:
        return True, value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            ok, v = _fits(value, a)
            if ok:
                return True, v
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            return False, value
        items = list(value)
        kinds = [args[0]] * len(items) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if not args:
            return True, value
        if len(kinds) != len(items):
            return False, value
        out = []
        for item, kind in zip(items, kinds, strict=True):
            ok, v = _fits(item, kind)
            if not ok:
                return False, value
            out.append(v)
        return True, out
    if isinstance(hint, type):
        return isinstance(value, hint), value
    return True, value  # a type this check does not know: accepted as parsed


def checked_value(key: str, raw: str, value: Any, hint: Any) -> Any:
    """`value` (parsed from `raw`) as field `key` of type `hint` holds it; text stays text
    where the field is a string (`--set data.train_dataset=2024`); a value of another type
    is one error line naming key, value and the expected type."""
    ok, v = _fits(value, hint)
    if ok:
        return v
    ok, v = _fits(raw, hint)  # a str field given something JSON reads as a number
    if ok and not isinstance(value, str):
        return v
    raise ValueError(f"--set {key}={raw}: {key} takes {_type_name(hint)}, not {raw!r}")


def _field_notes(kind: type) -> dict[str, str]:
    """The trailing `# comment` of each field in a config dataclass's source: its meaning."""
    import inspect

    notes: dict[str, str] = {}
    try:
        lines = inspect.getsource(kind).splitlines()
    except (OSError, TypeError):
        return notes
    for line in lines:
        head, sep, comment = line.partition("  # ")
        name = head.strip().split(":", 1)[0]
        if sep and name.isidentifier():
            notes[name] = comment.strip()
    return notes


def describe_settings(cfg: ExperimentConfig) -> list[tuple[str, object, str]]:
    """(`--set` key, current value, meaning) for every setting of a config."""
    rows: list[tuple[str, object, str]] = []
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        notes = _field_notes(type(value))
        for f in dataclasses.fields(value):
            rows.append((f"{section.name}.{f.name}", getattr(value, f.name), notes.get(f.name, "")))
    return rows
