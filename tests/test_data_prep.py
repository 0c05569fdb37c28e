"""Converters of raw dataset trees into JSONL records (data_prep/), on tiny fake trees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from data_prep import bmad, btad, colon, mpdd, mvfa, mvtec, visa
from data_prep._common import (
    LayoutError,
    list_images,
    read_records,
    write_records,
)

REPO = Path(__file__).resolve().parents[1]
FORMATS = {".png": "PNG", ".bmp": "BMP", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF"}


# --------------------------------------------------------------------------- helpers


def img(path: Path, mode: str = "RGB") -> Path:
    """Write a tiny image whose format follows the suffix (any case)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (4, 4)).save(path, format=FORMATS[path.suffix.lower()])
    return path


def cli(module: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m data_prep.<module> ARGS`` from the repository root."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", f"data_prep.{module}", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def check_records(root: Path, records: list[dict], masks: bool = True) -> None:
    """The record contract: keys, int labels, files present, mask only on anomalies."""
    assert records, "no records"
    for r in records:
        assert set(r) <= {"image_path", "label", "class_name", "mask_path"}
        assert r["label"] in (0, 1) and type(r["label"]) is int
        assert isinstance(r["class_name"], str) and r["class_name"]
        assert not Path(r["image_path"]).is_absolute()
        assert (root / r["image_path"]).is_file()
        if r["label"] == 0 or not masks:
            assert "mask_path" not in r
        else:
            assert (root / r["mask_path"]).is_file()


def by_path(records: list[dict]) -> dict[str, dict]:
    return {r["image_path"]: r for r in records}


def assert_layout_exit(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit code 2, one stderr line with no traceback, naming expected and found."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "expected" in lines[0] and "found" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


# --------------------------------------------------------------------------- fake trees


def make_mvtec(root: Path, classes: tuple[str, ...] = ("bottle", "screw")) -> Path:
    for cls in classes:
        for i in range(2):
            img(root / cls / "train" / "good" / f"{i:03d}.png")
            img(root / cls / "test" / "good" / f"{i:03d}.png")
        for defect in ("broken", "scratch"):
            for i in range(2):
                img(root / cls / "test" / defect / f"{i:03d}.png")
                img(root / cls / "ground_truth" / defect / f"{i:03d}_mask.png", "L")
    (root / "license.txt").write_text("not a class")
    return root


def make_visa(root: Path, header: str = "object,split,label,image,mask") -> Path:
    rows = [header]
    for cls in ("candle", "pcb1"):
        base = f"{cls}/Data"
        for i in range(3):
            img(root / base / "Images" / "Normal" / f"{i:04d}.JPG")
            rows.append(f"{cls},train,normal,{base}/Images/Normal/{i:04d}.JPG,")
        for i in range(3, 5):
            img(root / base / "Images" / "Normal" / f"{i:04d}.JPG")
            rows.append(f"{cls},test,normal,{base}/Images/Normal/{i:04d}.JPG,")
        for i in range(2):
            img(root / base / "Images" / "Anomaly" / f"{i:03d}.JPG")
            img(root / base / "Masks" / "Anomaly" / f"{i:03d}.png", "L")
            rows.append(
                f"{cls},test,anomaly,{base}/Images/Anomaly/{i:03d}.JPG,"
                f"{base}/Masks/Anomaly/{i:03d}.png"
            )
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def make_btad(root: Path) -> Path:
    # 01: bmp images, png masks; 02: png + png; 03: bmp + bmp (as in the real data)
    for cls, ext, mext in (("01", ".bmp", ".png"), ("02", ".png", ".png"), ("03", ".bmp", ".bmp")):
        img(root / cls / "train" / "ok" / f"9000{ext}")
        for i in range(2):
            img(root / cls / "test" / "ok" / f"{i:04d}{ext}")
            img(root / cls / "test" / "ko" / f"{i + 10:04d}{ext}")
            img(root / cls / "ground_truth" / "ko" / f"{i + 10:04d}{mext}", "L")
    return root


def make_medical(root: Path, split: str = "test", mask_folder: str | None = "label") -> Path:
    for i in range(3):
        img(root / split / "good" / "img" / f"n{i}.png")
    for i in range(2):
        img(root / split / "Ungood" / "img" / f"a{i}.png")
        if mask_folder:
            img(root / split / "Ungood" / mask_folder / f"a{i}.png", "L")
    return root


def make_colon(root: Path) -> Path:
    for i in range(3):
        img(root / "images" / f"{i}.png")
        img(root / "masks" / f"{i}.png", "L")
    return root


def make_mvfa(base: Path, obj: str) -> Path:
    root = base / f"{obj}_AD"
    masks = "anomaly_mask" if obj in mvfa.SEGMENTATION else None
    make_medical(root, "test", masks)
    make_medical(root, "valid", masks)
    return root


# --------------------------------------------------------------------------- common


def test_layout_error_is_one_line_naming_dataset_expected_and_found(tmp_path: Path) -> None:
    err = LayoutError("MVTec-AD", tmp_path, "a\nb", "c\nd")
    assert "\n" not in str(err)
    assert str(err).startswith(f"MVTec-AD at {tmp_path}: expected a b, found c d")


def test_list_images_matches_extensions_in_any_case_and_skips_hidden(tmp_path: Path) -> None:
    for name in ("a.png", "b.JPG", "c.jpeg", "d.BMP", "e.tif", "f.Png"):
        img(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "._a.png").write_bytes(b"apple double")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == [
        "a.png",
        "b.JPG",
        "c.jpeg",
        "d.BMP",
        "e.tif",
        "f.Png",
    ]
    assert list_images(tmp_path / "absent") == []


def test_write_records_is_sorted_deterministic_and_atomic(tmp_path: Path) -> None:
    records = [
        {"image_path": "b/2.png", "label": 1, "class_name": "b", "mask_path": "b/m.png"},
        {"image_path": "a/1.png", "label": 0, "class_name": "a"},
        {"image_path": "b/1.png", "label": 0, "class_name": "b"},
    ]
    out = tmp_path / "sub" / "out.jsonl"
    assert write_records(out, records) == 3
    first = out.read_bytes()
    write_records(out, list(reversed(records)))
    assert out.read_bytes() == first
    assert [r["image_path"] for r in read_records(out)] == ["a/1.png", "b/1.png", "b/2.png"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.jsonl"]  # no temp file left


# --------------------------------------------------------------------------- MVTec / MPDD


def test_mvtec_records(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mvtec")
    records = mvtec.convert(root)
    check_records(root, records)
    assert len(records) == 2 * (2 + 4)
    assert {r["class_name"] for r in records} == {"bottle", "screw"}
    assert not any("/train/" in r["image_path"] for r in records)
    rec = by_path(records)["bottle/test/broken/001.png"]
    assert rec == {
        "image_path": "bottle/test/broken/001.png",
        "label": 1,
        "class_name": "bottle",
        "mask_path": "bottle/ground_truth/broken/001_mask.png",
    }
    assert by_path(records)["screw/test/good/000.png"] == {
        "image_path": "screw/test/good/000.png",
        "label": 0,
        "class_name": "screw",
    }
    assert mpdd.convert(root) == records


def test_mvtec_lists_every_missing_mask_in_one_message(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mvtec")
    for i in range(2):
        (root / "bottle" / "ground_truth" / "broken" / f"{i:03d}_mask.png").unlink()
    with pytest.raises(LayoutError) as info:
        mpdd.convert(root)
    message = str(info.value)
    assert message.startswith("MPDD at ")
    assert "2 missing" in message
    assert "bottle/ground_truth/broken/000_mask.png" in message
    assert "bottle/ground_truth/broken/001_mask.png" in message


def test_mvtec_caps_the_list_of_missing_masks(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mvtec", classes=("grid",))
    for i in range(2, 14):
        img(root / "grid" / "test" / "glue" / f"{i:03d}.png")
    message = str(pytest.raises(LayoutError, mvtec.convert, root).value)
    assert "12 missing" in message and "(+2 more)" in message


def test_mvtec_missing_test_folder_and_empty_class(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mvtec")
    (root / "toothbrush" / "train" / "good").mkdir(parents=True)
    message = str(pytest.raises(LayoutError, mvtec.convert, root).value)
    assert "expected <class>/test/<defect|good>/*.png" in message
    assert "no 'test' under 'toothbrush'" in message
    (root / "toothbrush" / "test" / "good").mkdir(parents=True)
    message = str(pytest.raises(LayoutError, mvtec.convert, root).value)
    assert "no images in 'toothbrush/test'" in message


def test_mvtec_cli_writes_default_out_and_summary(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "MVTec")
    result = cli("mvtec", "--root", root)
    assert result.returncode == 0, result.stderr
    out = root / "test.jsonl"
    assert read_records(out) == mvtec.convert(root)
    assert result.stdout.strip().splitlines() == [
        f"MVTec-AD: wrote 12 records, 2 classes, 8 anomalous -> {out}"
    ]
    other = make_mvtec(tmp_path / "mvtec_anomaly_detection")  # the name of the download
    assert cli("mvtec", "--root", other).returncode == 0
    moved = read_records(tmp_path / "MVTec" / "test.jsonl")  # where the paper profile reads
    assert moved[0]["image_path"] == "../mvtec_anomaly_detection/bottle/test/broken/000.png"


def test_mpdd_cli_wrong_tree_exits_2(tmp_path: Path) -> None:
    root = tmp_path / "mpdd"
    (root / "connector" / "train").mkdir(parents=True)
    result = cli("mpdd", "--root", root, "--out", tmp_path / "o.jsonl")
    assert_layout_exit(result, "MPDD at", "<class>/test/", "no 'test' under 'connector'")
    assert not (tmp_path / "o.jsonl").exists()


# --------------------------------------------------------------------------- VisA


def test_visa_reads_the_test_split_only(tmp_path: Path) -> None:
    root = make_visa(tmp_path / "visa")
    records = visa.convert(root)
    check_records(root, records)
    assert len(records) == 2 * 4
    assert sum(r["label"] for r in records) == 4
    assert not any(r["image_path"].endswith(("0000.JPG", "0001.JPG")) for r in records)
    assert by_path(records)["pcb1/Data/Images/Anomaly/001.JPG"] == {
        "image_path": "pcb1/Data/Images/Anomaly/001.JPG",
        "label": 1,
        "class_name": "pcb1",
        "mask_path": "pcb1/Data/Masks/Anomaly/001.png",
    }


def test_visa_csv_with_bom(tmp_path: Path) -> None:
    root = make_visa(tmp_path / "visa", header="\ufeffobject,split,label,image,mask")
    assert len(visa.convert(root)) == 8


def test_visa_missing_column_is_a_clear_error(tmp_path: Path) -> None:
    root = make_visa(tmp_path / "visa", header="object,split,image,mask")
    message = str(pytest.raises(LayoutError, visa.convert, root).value)
    assert "expected split_csv/1cls.csv with columns object, split, label, image, mask" in message
    assert "found columns object, split, image, mask (missing label)" in message
    result = cli("visa", "--root", root)
    assert_layout_exit(result, "VisA at", "missing label")


def test_visa_rejects_paths_outside_the_root(tmp_path: Path) -> None:
    root = make_visa(tmp_path / "visa")
    csv_file = root / "split_csv" / "1cls.csv"
    outside = img(tmp_path / "outside.JPG")
    with csv_file.open("a") as handle:
        handle.write(f"candle,test,normal,{outside},\ncandle,test,normal,../outside.JPG,\n")
    message = str(pytest.raises(LayoutError, visa.convert, root).value)
    assert "2 rows without: line 16, line 17" in message


def test_visa_missing_files_and_csv(tmp_path: Path) -> None:
    root = make_visa(tmp_path / "visa")
    (root / "candle" / "Data" / "Masks" / "Anomaly" / "000.png").unlink()
    message = str(pytest.raises(LayoutError, visa.convert, root).value)
    assert "1 missing: candle/Data/Masks/Anomaly/000.png" in message
    (root / "split_csv" / "1cls.csv").unlink()
    result = cli("visa", "--root", root)
    assert_layout_exit(result, "no file '1cls.csv'")


# --------------------------------------------------------------------------- BTAD


def test_btad_records_with_png_and_bmp_masks(tmp_path: Path) -> None:
    root = make_btad(tmp_path / "btad")
    records = btad.convert(root)
    check_records(root, records)
    assert len(records) == 3 * 4
    paths = by_path(records)
    assert paths["01/test/ko/0010.bmp"]["mask_path"] == "01/ground_truth/ko/0010.png"
    assert paths["03/test/ko/0011.bmp"]["mask_path"] == "03/ground_truth/ko/0011.bmp"
    assert paths["02/test/ok/0000.png"] == {
        "image_path": "02/test/ok/0000.png",
        "label": 0,
        "class_name": "02",
    }


def test_btad_cli_and_wrong_subfolder(tmp_path: Path) -> None:
    root = make_btad(tmp_path / "btad")
    out = tmp_path / "btad.jsonl"
    result = cli("btad", "--root", root, "--out", out)
    assert result.returncode == 0, result.stderr
    assert len(read_records(out)) == 12
    img(root / "02" / "test" / "good" / "x.png")
    result = cli("btad", "--root", root, "--out", out)
    assert_layout_exit(result, "BTAD at", "test/{ok,ko}", "'02/test' holding good, ko, ok")


def test_btad_missing_masks(tmp_path: Path) -> None:
    root = make_btad(tmp_path / "btad")
    (root / "03" / "ground_truth" / "ko" / "0010.bmp").unlink()
    message = str(pytest.raises(LayoutError, btad.convert, root).value)
    assert "1 missing: 03/ground_truth/ko/0010.png|bmp" in message


# --------------------------------------------------------------------------- BMAD


@pytest.mark.parametrize("mask_folder", ["label", "anomaly_mask"])
@pytest.mark.parametrize("name", ["Brain", "Liver", "Retina"])
def test_bmad_both_mask_namings(tmp_path: Path, name: str, mask_folder: str) -> None:
    root = make_medical(tmp_path / "data", mask_folder=mask_folder)
    img(root / "train" / "good" / "img" / "t.png")
    records = bmad.convert(root, name)
    check_records(root, records)
    assert {r["class_name"] for r in records} == {name}
    assert (len(records), sum(r["label"] for r in records)) == (5, 2)
    assert by_path(records)["test/Ungood/img/a1.png"]["mask_path"] == (
        f"test/Ungood/{mask_folder}/a1.png"
    )


def test_bmad_name_inferred_from_folder_and_cli(tmp_path: Path) -> None:
    root = make_medical(tmp_path / "Retina_RESC_AD")
    assert {r["class_name"] for r in bmad.convert(root)} == {"Retina"}
    result = cli("bmad", "--root", root)
    assert result.returncode == 0, result.stderr
    assert "2 anomalous" in result.stdout
    other = make_medical(tmp_path / "mystery")
    result = cli("bmad", "--root", other)
    assert_layout_exit(result, "--name Brain|Liver|Retina", "folder name 'mystery'")
    result = cli("bmad", "--root", other, "--name", "Liver", "--out", tmp_path / "l.jsonl")
    assert result.returncode == 0, result.stderr


def test_bmad_wrong_trees(tmp_path: Path) -> None:
    root = make_medical(tmp_path / "Brain", mask_folder="masks")
    message = str(pytest.raises(LayoutError, bmad.convert, root).value)
    assert "expected test/Ungood/label/ or test/Ungood/anomaly_mask/" in message
    assert "found 'test/Ungood' holding img, masks" in message
    root = make_medical(tmp_path / "Liver")
    (root / "test" / "Ungood" / "label" / "a0.png").unlink()
    message = str(pytest.raises(LayoutError, bmad.convert, root).value)
    assert "1 missing: test/Ungood/label/a0.png" in message
    empty = tmp_path / "Retina"
    (empty / "test" / "good" / "img").mkdir(parents=True)
    result = cli("bmad", "--root", empty)
    assert_layout_exit(result, "BMAD Retina at", "no 'Ungood' under 'test'")


# --------------------------------------------------------------------------- colon


@pytest.mark.parametrize(
    ("folder", "class_name"),
    [
        ("CVC-ClinicDB", "Colon_clinicDB"),
        ("CVC-ColonDB", "Colon_colonDB"),
        ("Kvasir", "Kvasir"),
        ("CVC-300", "CVC-300"),
    ],
)
def test_colon_class_names_follow_the_released_lists(
    tmp_path: Path, folder: str, class_name: str
) -> None:
    root = make_colon(tmp_path / folder)
    records = colon.convert(root)
    check_records(root, records)
    assert all(r["label"] == 1 for r in records)
    assert {r["class_name"] for r in records} == {class_name}
    assert by_path(records)["images/2.png"]["mask_path"] == "masks/2.png"


def test_colon_cli_name_option_and_missing_masks(tmp_path: Path) -> None:
    root = make_colon(tmp_path / "polyps")
    result = cli("colon", "--root", root)
    assert_layout_exit(result, "--name CVC-ClinicDB|CVC-ColonDB|Kvasir|CVC-300")
    result = cli("colon", "--root", root, "--name", "Kvasir")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "Colon_Kvasir" / "test.jsonl"
    assert {r["class_name"] for r in read_records(out)} == {"Kvasir"}
    (root / "masks" / "0.png").unlink()
    (root / "masks" / "1.png").unlink()
    result = cli("colon", "--root", root, "--name", "CVC-300")
    assert_layout_exit(result, "CVC-300 at", "2 missing: masks/0.png, masks/1.png")


# --------------------------------------------------------------------------- MVFA


def test_mvfa_segmentation_and_classification_sets(tmp_path: Path) -> None:
    brain = make_mvfa(tmp_path, "Brain")
    records = mvfa.convert(brain)
    check_records(brain, records)
    assert {r["class_name"] for r in records} == {"Brain"}
    assert by_path(records)["test/Ungood/img/a0.png"]["mask_path"] == (
        "test/Ungood/anomaly_mask/a0.png"
    )
    assert not any(r["image_path"].startswith("valid/") for r in records)
    chest = make_mvfa(tmp_path, "Chest")
    records = mvfa.convert(chest)
    check_records(chest, records, masks=False)
    assert sum(r["label"] for r in records) == 2


def test_mvfa_segmentation_set_needs_masks(tmp_path: Path) -> None:
    root = make_mvfa(tmp_path, "Liver")
    (root / "test" / "Ungood" / "anomaly_mask" / "a1.png").unlink()
    message = str(pytest.raises(LayoutError, mvfa.convert, root).value)
    assert message.startswith("MVFA Liver at") and "test/Ungood/anomaly_mask/a1.png" in message


def test_mvfa_parse_seed_file_is_robust(tmp_path: Path) -> None:
    seed = tmp_path / "2-shot.txt"
    seed.write_text("\ufeffn-0: ['x.png', 'y.png']\n\n a-0 :a.png,  b.png\r\na-1: c.png d.png\n")
    assert mvfa.parse_seed_file(seed) == {
        "n-0": ["x.png", "y.png"],
        "a-0": ["a.png", "b.png"],
        "a-1": ["c.png", "d.png"],
    }
    seed.write_text("anomalous: a.png\n")
    message = str(pytest.raises(LayoutError, mvfa.parse_seed_file, seed).value)
    assert "line 1" in message


def test_mvfa_cli_with_seed_files(tmp_path: Path) -> None:
    root = make_mvfa(tmp_path / "data", "Retina_RESC")
    seeds = tmp_path / "fewshot_seed" / "Retina_RESC"
    seeds.mkdir(parents=True)
    (seeds / "2-shot.txt").write_text("a-0: a0.png a1.png\nn-0: n2.png n0.png\n")
    (seeds / "1-shot.txt").write_text("n-0: n1.png\na-0: a1.png")
    out = tmp_path / "meta" / "test.jsonl"
    result = cli("mvfa", "--root", root, "--out", out, "--shots", tmp_path / "fewshot_seed")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 3
    assert len(read_records(out)) == 5
    two = read_records(out.parent / "2-shot.jsonl")
    check_records(root, two)
    assert sorted((r["label"], r["image_path"]) for r in two) == [
        (0, "valid/good/img/n0.png"),
        (0, "valid/good/img/n2.png"),
        (1, "valid/Ungood/img/a0.png"),
        (1, "valid/Ungood/img/a1.png"),
    ]
    assert by_path(two)["valid/Ungood/img/a1.png"]["mask_path"] == (
        "valid/Ungood/anomaly_mask/a1.png"
    )
    assert len(read_records(out.parent / "1-shot.jsonl")) == 2


def test_mvfa_seed_errors(tmp_path: Path) -> None:
    root = make_mvfa(tmp_path / "data", "Histopathology")
    seed = tmp_path / "seeds" / "2-shot.txt"
    seed.parent.mkdir()
    seed.write_text("a-0: a0.png gone.png\nn-0: n0.png lost.png\n")
    message = str(pytest.raises(LayoutError, mvfa.shot_records, root, seed).value)
    assert "2 missing: valid/Ungood/img/gone.png, valid/good/img/lost.png" in message
    seed.write_text("a-0: a0.png\nn-0: n0.png n1.png\n")
    message = str(pytest.raises(LayoutError, mvfa.shot_records, root, seed).value)
    assert "expected 2 names on the line 'a-0:', found 1 names" in message
    seed.write_text("a-0: a0.png ../../Chest_AD/x.png\nn-0: n0.png n1.png\n")
    message = str(pytest.raises(LayoutError, mvfa.shot_records, root, seed).value)
    assert "not a plain file name" in message
    seed.write_text("a-0: a0.png a1.png\nn-0: n0.png n1.png\n")
    records = mvfa.shot_records(root, seed)
    check_records(root, records, masks=False)
    assert {r["class_name"] for r in records} == {"Histopathology"}


def test_mvfa_cli_wrong_root(tmp_path: Path) -> None:
    make_mvfa(tmp_path / "data", "Chest")
    result = cli("mvfa", "--root", tmp_path / "data")
    assert_layout_exit(result, "holding Chest_AD (pass one of them as --root)")
    broken = tmp_path / "Brain_AD"
    (broken / "valid").mkdir(parents=True)
    result = cli("mvfa", "--root", broken)
    assert_layout_exit(result, "MVFA Brain at", "no 'test' under the root")


# --------------------------------------------------------------------------- all CLIs


@pytest.mark.parametrize(
    ("module", "extra"),
    [
        ("mvtec", ()),
        ("visa", ()),
        ("btad", ()),
        ("bmad", ("--name", "Brain")),
        ("colon", ("--name", "Kvasir")),
        ("mvfa", ("--obj", "Chest")),
    ],
)
def test_every_cli_rejects_a_missing_root(tmp_path: Path, module: str, extra: tuple) -> None:
    result = cli(module, "--root", tmp_path / "nowhere", *extra)
    assert_layout_exit(result, "no such folder")


def test_records_round_trip_as_json(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "m", classes=("wood",))
    out = tmp_path / "o.jsonl"
    write_records(out, mvtec.convert(root))
    for line in out.read_text().splitlines():
        assert json.loads(line)["class_name"] == "wood"


# ------------------------------------------- default outputs are where the paper reads


def _paper_file(data_root: Path, name: str) -> Path:
    from aaclip.config import preset

    cfg = preset("paper", data_root=str(data_root))
    files = dict(zip(cfg.data.test_datasets, cfg.data.test_records, strict=True))
    files[cfg.data.train_dataset] = cfg.data.train_records
    return Path(files[name])


PAPER_CASES = [
    (mvtec, make_mvtec, "mvtec_anomaly_detection", [], "MVTec"),
    (mpdd, make_mvtec, "MPDD_raw", [], "MPDD"),
    (btad, make_btad, "BTech_Dataset_transformed", [], "BTAD"),
    (visa, make_visa, "VisA_20220922", [], "VisA"),
    (bmad, make_medical, "BrainMRI", [], "Brain"),
    (bmad, make_medical, "raw_liver", ["--name", "Liver"], "Liver"),
    (bmad, make_medical, "Retina_RESC_AD", [], "Retina"),
    (mvfa, lambda root: make_mvfa(root.parent, "Liver"), "Liver_AD", [], "Liver"),
    (colon, make_colon, "CVC-ClinicDB", [], "Colon_clinicDB"),
    (colon, make_colon, "CVC-ColonDB", [], "Colon_colonDB"),
    (colon, make_colon, "Kvasir-SEG", [], "Colon_Kvasir"),
    (colon, make_colon, "polyps", ["--name", "CVC-300"], "Colon_cvc300"),
]


@pytest.mark.parametrize(("module", "make", "raw", "extra", "name"), PAPER_CASES)
def test_converters_write_where_the_paper_profile_reads(
    tmp_path: Path, capsys, module, make, raw, extra, name
) -> None:
    from aaclip.data import load_records

    data_root = tmp_path / "data"
    root = make(data_root / raw)
    assert module.main(["--root", str(root), *extra]) == 0
    expected = _paper_file(data_root, name)
    assert f"-> {expected}" in capsys.readouterr().out
    records = load_records(expected, require_masks=False)  # paths resolve from that folder
    assert len(records) == len(module.convert(root, *extra[1:]))


def test_every_paper_target_has_a_converter_default() -> None:
    from aaclip.config import PAPER_TARGETS

    assert {case[-1] for case in PAPER_CASES} == {*PAPER_TARGETS, "VisA"}
