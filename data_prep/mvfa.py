"""The six MVFA-AD medical sets: ``<Obj>_AD/{valid,test}/{good,Ungood}/img/*``.

The root is one ``<Obj>_AD`` folder; ``Obj`` is one of :data:`OBJECTS` (``--obj``, or the
root folder's name without ``_AD``). Brain, Liver and Retina_RESC have masks in
``Ungood/anomaly_mask/<name>`` (a ``label`` folder is accepted too); Retina_OCT2017, Chest
and Histopathology are classification-only, so their anomalous records carry no
``mask_path``. ``class_name`` is the object name (``--class-name`` overrides it); the
prompt names (``retinal OCT``, ``Chest X-ray film`` ...) are the model's business.

Files are ``.png``, Retina_OCT2017's ``.jpeg``; masks pair with images by file name (the
release swaps "img" for "anomaly_mask" in the path, or zips two sorted listings).

The test records come from ``test``. With ``--shots SEED_DIR`` the MVFA few-shot seed files
``SEED_DIR/<Obj>/<k>-shot.txt`` (or ``SEED_DIR/<k>-shot.txt``), k in :data:`SHOTS`, are
converted as well: the line ``a-0: f1 ... fk`` names anomalous images of
``valid/Ungood/img`` (masks in ``valid/Ungood/anomaly_mask``) and ``n-0: ...`` normal
images of ``valid/good/img``, in either order; each file becomes ``<k>-shot.jsonl`` (in
``--shots-out``, default the folder of ``--out``).

CLI: ``python -m data_prep.mvfa --root <Obj>_AD [--out OUT.jsonl] [--shots SEED_DIR]``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from data_prep._common import (
    LayoutError,
    Outputs,
    Record,
    check_missing,
    find_mask,
    list_dirs,
    make_record,
    rel,
    require_dir,
    run_cli,
    sort_records,
    stem_index,
)
from data_prep.bmad import ANOMALOUS, NORMAL, mask_folder, medical_split

OBJECTS = ("Brain", "Liver", "Retina_RESC", "Retina_OCT2017", "Chest", "Histopathology")
PAPER_FOLDERS = {"Brain": "Brain", "Liver": "Liver", "Retina_RESC": "Retina"}
"""Object -> folder the paper profile reads; the other objects are not paper targets."""
SEGMENTATION = ("Brain", "Liver", "Retina_RESC")
"""Objects with pixel masks; the others are classification-only."""
MASK_FOLDERS = ("anomaly_mask", "label")
SHOTS = (1, 2, 4, 8, 16)
"""k of the released seed files (``1-shot.txt``: ClipMPCAD only)."""
LAYOUT = "<Obj>_AD/test/{good,Ungood}/img/*"
VALID_LAYOUT = "<Obj>_AD/valid/{good,Ungood}/img"
_SEED_LINE = re.compile(r"^\s*([an])\s*-\s*(\d+)\s*:(.*)$")
_SEED_FILE = re.compile(r"^(.*)-shot\.txt$")


def dataset_name(obj: str) -> str:
    """How messages name an object's set."""
    return f"MVFA {obj}"


def resolve_obj(root: Path, obj: str | None) -> str:
    """The given object (checked) or the root folder's name without ``_AD``."""
    root = Path(root)
    if obj is None:
        name = root.resolve().name
        obj = name[:-3] if name.endswith("_AD") else name
        if obj not in OBJECTS:
            inner = [d.name for d in list_dirs(root) if d.name.endswith("_AD")]
            found = (
                f"folder name '{name}' holding {', '.join(inner)} (pass one of them as --root)"
                if inner
                else f"folder name '{name}'"
            )
            raise LayoutError("MVFA", root, f"--obj or a root named <Obj>_AD, {_objs()}", found)
    if obj not in OBJECTS:
        raise LayoutError("MVFA", root, _objs(), repr(obj))
    return obj


def _objs() -> str:
    return "Obj among " + ", ".join(OBJECTS)


def _masks(obj: str) -> tuple[str, ...] | None:
    return MASK_FOLDERS if obj in SEGMENTATION else None


def image_suffix(obj: str) -> str:
    """The released file suffix of an object's images: ``.jpeg`` for OCT2017, else ``.png``."""
    return ".jpeg" if obj == "Retina_OCT2017" else ".png"


def seed_shots(path: Path, dataset: str = "MVFA") -> int:
    """k of a seed file named ``<k>-shot.txt``; another name or a k not in :data:`SHOTS`
    raises one :class:`LayoutError` line naming the file."""
    match = _SEED_FILE.match(Path(path).name)
    k = match.group(1) if match else ""
    if not (k.isdigit() and int(k) in SHOTS):
        expected = "a seed file named <k>-shot.txt, k in " + ", ".join(map(str, SHOTS))
        raise LayoutError(dataset, path, expected, f"'{Path(path).name}'")
    return int(k)


def convert(root: Path, obj: str | None = None, class_name: str | None = None) -> list[Record]:
    """Records of the ``test`` split of one MVFA set at ``root`` (an ``<Obj>_AD`` folder)."""
    root = Path(root)
    obj = resolve_obj(root, obj)
    dataset = dataset_name(obj)
    require_dir(dataset, root, root / "test", LAYOUT)
    return medical_split(
        dataset, root, "test", class_name or obj, _masks(obj), f"*{image_suffix(obj)}"
    )


def parse_seed_file(path: Path, dataset: str = "MVFA") -> dict[str, list[str]]:
    """``{"a-0": [...], "n-0": [...], ...}`` from a seed file.

    Accepts ``a-0: f1 f2``, commas or semicolons between names, quotes and brackets
    around them, blank lines and a byte-order mark.
    """
    lists: dict[str, list[str]] = {}
    text = Path(path).read_text(encoding="utf-8-sig")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _SEED_LINE.match(line)
        if match is None:
            raise LayoutError(
                dataset,
                path,
                "lines 'a-<i>: f1 ... fk' or 'n-<i>: f1 ... fk'",
                f"line {number}: {line.strip()[:60]!r}",
            )
        kind, index, rest = match.groups()
        names = [n.strip("'\"[]()") for n in re.split(r"[\s,;]+", rest)]
        lists[f"{kind}-{int(index)}"] = [n for n in names if n]
    return lists


def seed_files(seed_dir: Path, obj: str) -> dict[int, Path]:
    """``{k: path}`` of the ``<k>-shot.txt`` files in ``seed_dir/<obj>`` or ``seed_dir``;
    a ``*-shot.txt`` file for a k not in :data:`SHOTS` is an error."""
    seed_dir = Path(seed_dir)
    folder = seed_dir / obj if (seed_dir / obj).is_dir() else seed_dir
    found: dict[int, Path] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if _SEED_FILE.match(path.name) and path.is_file():
                found[seed_shots(path, dataset_name(obj))] = path
    if not found:
        raise LayoutError(dataset_name(obj), seed_dir, f"{obj}/<k>-shot.txt seed files", "none")
    return dict(sorted(found.items()))


def shot_records(
    root: Path,
    seed_file: Path,
    obj: str | None = None,
    class_name: str | None = None,
    iterate: int = 0,
) -> list[Record]:
    """Records of one seed file: ``a-<iterate>`` anomalous and ``n-<iterate>`` normal
    images of ``valid``, each list checked to hold k distinct names (k from the file name).

    Every image (and, for the segmentation sets, mask) the file names but the tree lacks
    is listed in one error line.
    """
    root, seed_file = Path(root), Path(seed_file)
    obj = resolve_obj(root, obj)
    dataset = dataset_name(obj)
    cls = class_name or obj
    shots = seed_shots(seed_file, dataset)
    require_dir(dataset, root, root / "valid", f"{VALID_LAYOUT} for the seed file {seed_file}")
    lists = parse_seed_file(seed_file, dataset)
    records: list[Record] = []
    missing: list[str] = []
    for kind, group, label in (("a", ANOMALOUS, 1), ("n", NORMAL, 0)):
        key = f"{kind}-{iterate}"
        names = lists.get(key)
        if not names or len(names) != shots:
            count = "no line" if names is None else f"{len(names)} names"
            raise LayoutError(dataset, seed_file, f"{shots} names on the line '{key}:'", count)
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            found = ", ".join(twice) + " more than once"
            raise LayoutError(dataset, seed_file, f"distinct names on the line '{key}:'", found)
        folder = root / "valid" / group / "img"
        require_dir(dataset, root, folder, f"{VALID_LAYOUT} for the seed file {seed_file}")
        masks_dir = None
        if label == 1 and _masks(obj) is not None:
            masks_dir = mask_folder(dataset, root, "valid", MASK_FOLDERS)
        index = stem_index(masks_dir) if masks_dir is not None else {}
        for name in names:
            image = folder / name
            if Path(name).name != name or name in (".", ".."):
                missing.append(f"{name!r} (not a plain file name)")
                continue
            if not image.is_file():
                missing.append(rel(image, root))
                continue
            mask_path = None
            if masks_dir is not None:
                mask = find_mask(index, image)
                if mask is None:
                    missing.append(rel(masks_dir / name, root))
                    continue
                mask_path = rel(mask, root)
            records.append(make_record(rel(image, root), label, cls, mask_path))
    check_missing(dataset, root, f"every file named in {seed_file}", missing, limit=None)
    return sort_records(records)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--obj",
        choices=OBJECTS,
        default=None,
        help="object (default: the root folder name without _AD)",
    )
    parser.add_argument(
        "--class-name", default=None, help="class name of the records (default: the object name)"
    )
    parser.add_argument(
        "--shots",
        type=Path,
        default=None,
        metavar="SEED_DIR",
        help="fewshot_seed folder: also write <k>-shot.jsonl per seed file",
    )
    parser.add_argument(
        "--shots-out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder for the <k>-shot.jsonl files (default: that of --out)",
    )
    parser.add_argument(
        "--iterate",
        type=int,
        default=0,
        help="which a-<i>/n-<i> lines of the seed files to use (default 0)",
    )


def _shot_outputs(args: argparse.Namespace, out: Path) -> Outputs:
    if args.shots is None:
        return {}
    obj = resolve_obj(args.root, args.obj)
    folder = args.shots_out if args.shots_out is not None else out.parent
    return {
        folder / f"{k}-shot.jsonl": shot_records(
            args.root, path, obj, args.class_name, args.iterate
        )
        for k, path in seed_files(args.shots, obj).items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--root <Obj>_AD [--out OUT.jsonl] [--shots SEED_DIR] ...``."""
    return run_cli(
        "MVFA",
        lambda args: convert(args.root, args.obj, args.class_name),
        argv,
        prog="python -m data_prep.mvfa",
        description="Write the test records (and few-shot seed records) of an MVFA set.",
        add_arguments=_add_arguments,
        extra_outputs=_shot_outputs,
        folder=lambda args: PAPER_FOLDERS.get(resolve_obj(args.root, args.obj)),
    )


if __name__ == "__main__":
    sys.exit(main())
