"""Records, validation, image/mask loading, joint augmentation and few-shot sampling."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from aaclip.data import (
    CLIP_MEAN,
    CLIP_STD,
    ImageError,
    Record,
    RecordDataset,
    RecordError,
    check_images,
    class_names,
    load_image,
    load_mask,
    load_records,
    read_records,
    sample_few_shot,
    unreadable_images,
    validate_records,
    write_few_shot,
    write_records,
)
from aaclip.transforms import JointTransform, color_transform

GOOD = {"image_path": "a/0.png", "label": 0, "class_name": "a"}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def save(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


# -- reading records -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"image_path": "a/1.png", "label": 0', "invalid JSON"),
        ('{"image_path": "a/1.png", "class_name": "a"}', "missing key 'label'"),
        ('{"image_path": "a/1.png", "label": 2, "class_name": "a"}', "label must be 0 or 1, got 2"),
        ('{"image_path": "a/1.png", "label": "1", "class_name": "a"}', "got '1'"),
        ('{"image_path": "a/1.png", "label": true, "class_name": "a"}', "label must be 0 or 1"),
        ('{"image_path": "a/1.png", "label": 0.5, "class_name": "a"}', "label must be 0 or 1"),
        ('{"image_path": 5, "label": 0, "class_name": "a"}', "image_path must be a non-empty"),
        ('{"image_path": "a/1.png", "label": 0, "class_name": ""}', "class_name must be"),
        ('{"image_path": "a/1.png", "label": 1, "class_name": "a", "mask_path": 3}', "mask_path"),
        ('{"image_path": "/abs/1.png", "label": 0, "class_name": "a"}', "must be relative"),
        ('["a/1.png", 0, "a"]', "expected a JSON object"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    path = write_lines(tmp_path / "test.jsonl", [json.dumps(GOOD), "", line])
    with pytest.raises(RecordError) as err:
        read_records(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:3: "), msg
    assert expected in msg
    assert "\n" not in msg


def test_empty_and_missing_files(tmp_path: Path) -> None:
    for text in ("", "\n  \n"):
        (tmp_path / "e.jsonl").write_text(text)
        with pytest.raises(RecordError, match=r"e\.jsonl: no records$"):
            read_records(tmp_path / "e.jsonl")
    with pytest.raises(RecordError, match="no such records file"):
        read_records(tmp_path / "absent.jsonl")


def test_released_style_and_round_trip(tmp_path: Path) -> None:
    lines = [
        # the released metadata writes float labels and leaves mask_path out for normals
        '{"image_path": "a/0.png", "label": 0.0, "class_name": "a"}',
        '{"image_path": "a/1.png", "label": 1.0, "class_name": "a", "mask_path": "a/m1.png"}',
        '{"image_path": "b/0.png", "label": 0, "class_name": "b", "mask_path": ""}',
        '{"image_path": "b/1.png", "label": 0, "class_name": "b", "mask_path": null}',
    ]
    recs = read_records(write_lines(tmp_path / "in.jsonl", lines))
    assert [r.label for r in recs] == [0, 1, 0, 0]
    assert all(type(r.label) is int for r in recs)
    assert [r.mask_path for r in recs] == [None, "a/m1.png", None, None]
    assert recs[0].to_json() == {"image_path": "a/0.png", "label": 0, "class_name": "a"}
    assert recs[1].to_json()["mask_path"] == "a/m1.png"
    write_records(tmp_path / "sub" / "out.jsonl", recs)
    assert read_records(tmp_path / "sub" / "out.jsonl") == recs
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["out.jsonl"]  # no temp left
    assert class_names(recs) == ["a", "b"]
    with pytest.raises(ValueError):
        Record("x.png", 2, "a")


# -- validation ----------------------------------------------------------------------------


def make_tree(root: Path, n: int = 3) -> list[Record]:
    recs = []
    for i in range(n):
        save(root / f"c/{i}.png", Image.new("RGB", (8, 8)))
        save(root / f"c/{i}_mask.png", Image.new("L", (8, 8), 255))
        recs += [Record(f"c/{i}.png", 0, "c"), Record(f"c/{i}a.png", 1, "c", f"c/{i}_mask.png")]
    return recs


def test_all_missing_files_listed_at_once(tmp_path: Path) -> None:
    recs = make_tree(tmp_path)  # the three anomalous images are absent
    with pytest.raises(RecordError) as err:
        validate_records(recs, tmp_path, source="set.jsonl")
    msg = str(err.value)
    assert msg.startswith("set.jsonl: 3 missing files")
    assert all(f"c/{i}a.png" in msg for i in range(3)) and "\n" not in msg
    many = [Record(f"x/{i}.png", 0, "x") for i in range(12)]
    with pytest.raises(RecordError, match="12 missing files.*… and 7 more"):
        validate_records(many, tmp_path)


def test_duplicates_and_anomalies_without_masks(tmp_path: Path) -> None:
    save(tmp_path / "a.png", Image.new("RGB", (8, 8)))
    save(tmp_path / "b.png", Image.new("RGB", (8, 8)))
    dup = [Record("a.png", 0, "c"), Record("./a.png", 0, "c")]
    with pytest.raises(RecordError, match="1 duplicate image path: a.png"):
        validate_records(dup, tmp_path)
    unmasked = [Record("a.png", 0, "c"), Record("b.png", 1, "c")]
    with pytest.raises(RecordError, match="1 anomalous record without a mask_path.*b.png"):
        validate_records(unmasked, tmp_path)
    validate_records(unmasked, tmp_path, require_masks=False)
    with pytest.raises(RecordError, match="no records"):
        validate_records([], tmp_path)


def test_load_records_defaults_root_to_file_folder(tmp_path: Path) -> None:
    recs = [r for r in make_tree(tmp_path) if r.label == 0]
    write_records(tmp_path / "train.jsonl", recs)
    assert load_records(tmp_path / "train.jsonl") == recs
    write_records(tmp_path / "other" / "train.jsonl", recs)
    with pytest.raises(RecordError, match="3 missing files"):
        load_records(tmp_path / "other" / "train.jsonl")
    assert load_records(tmp_path / "other" / "train.jsonl", root=tmp_path) == recs


# -- unreadable images found before training (issue 8.5) ---------------------------------


def noise(size=(64, 48), mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def bad_tree(root: Path) -> tuple[list[Record], dict[str, str]]:
    """Good images of every format and one of each kind of broken file."""
    recs = []
    for i, ext in enumerate(("png", "jpg", "bmp", "tif")):
        save(root / f"ok/{i}.{ext}", noise(seed=i))
        recs.append(Record(f"ok/{i}.{ext}", 0, "c"))
    with_trailer = save(root / "ok/trailer.jpg", noise(seed=9))
    with_trailer.write_bytes(with_trailer.read_bytes() + b"APPENDED-VIDEO" * 50)  # loads fine
    recs.append(Record("ok/trailer.jpg", 0, "c"))
    save(root / "ok/m.png", Image.new("L", (64, 48), 255))
    broken = {
        "bad/half.png": truncate(save(root / "bad/half.png", noise(seed=4))),
        "bad/half.jpg": truncate(save(root / "bad/half.jpg", noise(seed=5), quality=95)),
        "bad/half.bmp": truncate(save(root / "bad/half.bmp", noise(seed=6))),
        "bad/zero.png": save(root / "bad/zero.png", noise()),
        "bad/mask.png": truncate(save(root / "bad/mask.png", noise(mode="L", seed=7))),
    }
    broken["bad/zero.png"].write_bytes(b"")
    flipped = save(root / "bad/flipped.png", noise(seed=8))
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one damaged byte: the chunk CRC no longer matches
    flipped.write_bytes(bytes(data))
    broken["bad/flipped.png"] = flipped
    recs += [Record(rel, 0, "c") for rel in broken if rel != "bad/mask.png"]
    recs.append(Record("ok/a.png", 1, "c", "bad/mask.png"))
    save(root / "ok/a.png", noise(seed=10))
    return recs, {rel: str(p) for rel, p in broken.items()}


def test_every_unreadable_image_and_mask_is_listed_at_once(tmp_path: Path) -> None:
    recs, broken = bad_tree(tmp_path)
    bad = unreadable_images([tmp_path / r.image_path for r in recs], workers=4)
    assert set(bad) == {p for rel, p in broken.items() if rel != "bad/mask.png"}
    with pytest.raises(ImageError) as err:
        check_images(recs, tmp_path, workers=3, source="set.jsonl")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(
        f"set.jsonl: 6 unreadable image files under {tmp_path}"
    )
    assert all(rel in msg for rel in broken) and "ok/" not in msg
    assert "truncated" in msg and str(tmp_path / "bad") not in msg  # reasons without the paths


def test_load_records_checks_images_before_training(tmp_path: Path) -> None:
    recs, broken = bad_tree(tmp_path)
    write_records(tmp_path / "train.jsonl", recs)
    with pytest.raises(ImageError, match="6 unreadable image files"):
        load_records(tmp_path / "train.jsonl")
    assert load_records(tmp_path / "train.jsonl", check_images=False) == recs
    good = [r for r in recs if r.image_path.startswith("ok/") and r.label == 0]
    write_records(tmp_path / "good.jsonl", good)
    assert load_records(tmp_path / "good.jsonl") == good


def test_training_stops_on_a_truncated_image_before_the_first_epoch(synthetic_root, tmp_path):
    import shutil

    from aaclip import train as tr
    from aaclip.config import apply_overrides, preset

    root = tmp_path / "synthetic"
    shutil.copytree(synthetic_root, root)
    first = read_records(root / "train.jsonl")[3]
    truncate(root / first.image_path)
    cfg = apply_overrides(preset("smoke", data_root=str(root)), ["backbone.image_size=64"])
    with pytest.raises(
        ImageError, match=f"1 unreadable image file under {root}: .*{first.image_path}"
    ):
        tr.train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_embedded_dataset_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(RecordError) as err:
        load_records(tmp_path / "data" / "synthetic" / "train.jsonl")
    msg = str(err.value)
    assert "no such records file" in msg and "\n" not in msg
    assert f"aaclip prepare synthetic --out {tmp_path / 'data' / 'synthetic'}" in msg
    with pytest.raises(RecordError) as err:
        load_records(tmp_path / "MVTec" / "test.jsonl")
    assert "prepare synthetic" not in str(err.value)


# -- images and masks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "ext"),
    [
        ("RGB", "png"),
        ("L", "png"),
        ("RGBA", "png"),
        ("LA", "png"),
        ("I;16", "png"),
        ("RGB", "bmp"),
        ("RGB", "jpg"),
        ("P", "png"),
        ("1", "png"),
        ("F", "tif"),
    ],
)
def test_every_image_format_loads_as_rgb(tmp_path: Path, mode: str, ext: str) -> None:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 20, 3), np.uint8))
    if mode == "I;16":
        img = Image.fromarray((np.arange(240).reshape(12, 20) * 257).astype(np.uint16))
    elif mode == "F":
        img = Image.fromarray(np.linspace(0, 1, 240, dtype=np.float32).reshape(12, 20))
    else:
        img = rgb.convert(mode)
    out = load_image(save(tmp_path / f"x.{ext}", img))
    assert out.mode == "RGB" and out.size == (20, 12)
    if mode == "I;16":  # 16-bit scaled by 257, not clipped
        assert np.array_equal(np.asarray(out)[..., 0], np.arange(240).reshape(12, 20))
    if mode == "RGBA":  # alpha dropped, colours kept (as the released convert("RGB"))
        assert np.array_equal(np.asarray(out), np.asarray(rgb))
    if mode == "F":
        assert np.asarray(out).max() == 255


def test_unreadable_images_name_the_path(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    good = save(tmp_path / "good.png", Image.new("RGB", (64, 64), "red"))
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    for name in ("bad.png", "cut.png", "absent.png"):
        with pytest.raises(ImageError) as err:
            load_image(tmp_path / name)
        assert str(err.value).startswith(str(tmp_path / name)) and "\n" not in str(err.value)
    with pytest.raises(ImageError, match="cannot read mask"):
        load_mask(tmp_path / "bad.png", 8)


@pytest.mark.parametrize("mode", ["L", "L01", "I;16", "RGB", "RGBA", "P", "1"])
@pytest.mark.parametrize("shape", [(4, 4), (7, 13)])
def test_masks_any_mode_and_size(tmp_path: Path, mode: str, shape: tuple[int, int]) -> None:
    h, w = shape
    a = np.zeros(shape, bool)
    a[:, : w // 2] = True  # left half
    if mode == "L01":
        img = Image.fromarray(a.astype(np.uint8))  # values 0/1, as some datasets store them
    elif mode == "I;16":
        img = Image.fromarray((a * 1000).astype(np.uint16))
    elif mode in ("RGB", "RGBA"):
        rgb = np.zeros((*shape, 3), np.uint8)
        rgb[a, 0] = 200  # a red-only mask
        img = Image.fromarray(rgb).convert(mode)
    else:
        img = Image.fromarray(a.astype(np.uint8) * 255).convert(mode)
    m = load_mask(save(tmp_path / "m.png", img), 2 * w)
    assert m.shape == (1, 2 * w, 2 * w) and m.dtype == torch.float32
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    expected = np.asarray(Image.fromarray(a.astype(np.uint8)).resize((2 * w, 2 * w), 0))
    assert np.array_equal(m[0].numpy(), expected.astype(np.float32))  # nearest: exact copy


# -- dataset and augmentation ----------------------------------------------------------------


def square_tree(root: Path, size: int = 32) -> list[Record]:
    img = np.full((size, size, 3), 30, np.uint8)
    img[6:14, 9:22] = 250
    mask = np.zeros((size, size), np.uint8)
    mask[6:14, 9:22] = 255
    save(root / "c/bad.png", Image.fromarray(img))
    save(root / "c/bad_mask.png", Image.fromarray(mask))
    save(root / "c/good.png", Image.fromarray(np.full((size, size), 90, np.uint8)))
    return [Record("c/good.png", 0, "c"), Record("c/bad.png", 1, "c", "c/bad_mask.png")]


def test_dataset_outputs(tmp_path: Path) -> None:
    recs = square_tree(tmp_path)
    ds = RecordDataset(recs, tmp_path, image_size=24)
    assert len(ds) == 2
    good, bad = ds[0], ds[1]
    for item in (good, bad):
        assert item["image"].shape == (3, 24, 24) and item["image"].dtype == torch.float32
        assert item["mask"].shape == (1, 24, 24) and item["mask"].dtype == torch.float32
        assert item["label"].dtype == torch.int64 and item["label"].ndim == 0
        assert item["class_name"] == "c"
    assert good["mask"].sum() == 0 and bad["mask"].sum() > 0 and bad["image_path"] == "c/bad.png"
    assert int(bad["label"]) == 1 and bad["has_mask"] and not good["has_mask"]
    # released preprocessing: PIL bicubic resize, ToTensor, Normalize
    ref = T.Compose(
        [T.Resize((24, 24), Image.BICUBIC), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)]
    )
    assert torch.allclose(bad["image"], ref(Image.open(tmp_path / "c/bad.png").convert("RGB")))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, 24, 24) and batch["label"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="augment must be one of"):
        RecordDataset(recs, tmp_path, 24, augment="flip")


@pytest.mark.parametrize("augment", ["geometric", "geometric+color"])
def test_joint_augmentation_keeps_image_and_mask_aligned(tmp_path: Path, augment: str) -> None:
    ds = RecordDataset(square_tree(tmp_path), tmp_path, image_size=32, augment=augment)
    original = load_mask(tmp_path / "c/bad_mask.png", 32)
    moved = 0
    for seed in range(12):
        torch.manual_seed(seed)
        item = ds[1]
        image, mask = item["image"], item["mask"][0] == 1
        assert mask.sum() > 0
        # the square is one colour after any jitter: exactly its pixels must be masked
        value = image[:, mask][:, 0]
        in_square = (image == value[:, None, None]).all(0)
        assert torch.equal(in_square, mask), seed
        moved += not torch.equal(mask, original[0] == 1)
    assert moved >= 6  # the transform did move things


def test_augmentation_is_seeded(tmp_path: Path) -> None:
    ds = RecordDataset(square_tree(tmp_path), tmp_path, 32, augment="geometric+color")
    torch.manual_seed(3)
    a = ds[1]
    torch.manual_seed(3)
    b = ds[1]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    outs = []
    for s in range(4):
        torch.manual_seed(s)
        outs.append(ds[1]["image"])
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_transforms_match_the_released_torchvision_v1_pipeline() -> None:
    """Same seed, same draws: our v2 transforms equal the released stacked v1 pipeline."""
    released_geo = T.Compose(
        [
            T.RandomApply([T.RandomRotation(degrees=math.degrees(math.pi / 6))], p=0.5),
            T.RandomApply([T.RandomAffine(degrees=0, translate=(0.15, 0.15))], p=0.5),
            T.RandomHorizontalFlip(p=0.5),
            T.RandomVerticalFlip(p=0.5),
        ]
    )
    released_color = T.Compose(
        [
            T.RandomApply([T.ColorJitter(brightness=0.5)], p=0.7),
            T.RandomApply([T.ColorJitter(contrast=0.5)], p=0.7),
            T.RandomApply([T.ColorJitter(saturation=0.5)], p=0.7),
        ]
    )
    g = torch.Generator().manual_seed(0)
    img, mask = torch.randn(3, 20, 20, generator=g), (torch.rand(1, 20, 20, generator=g) > 0.6)
    pil = Image.fromarray((torch.rand(16, 16, 3, generator=g) * 255).byte().numpy())
    joint, color = JointTransform(), color_transform()
    for seed in range(10):
        torch.manual_seed(seed)
        ref = released_geo(torch.cat([img, mask.float()]))
        torch.manual_seed(seed)
        assert torch.equal(torch.cat(joint(img, mask.float())), ref)
        torch.manual_seed(seed)
        ref_pil = np.asarray(released_color(pil))
        torch.manual_seed(seed)
        assert np.array_equal(np.asarray(color(pil)), ref_pil)


# -- few-shot --------------------------------------------------------------------------------


def shot_pool() -> list[Record]:
    recs = []
    for c in ("cable", "screw"):
        recs += [Record(f"{c}/good/{i}.png", 0, c) for i in range(6)]
        recs += [Record(f"{c}/bad/{i}.png", 1, c, f"{c}/gt/{i}.png") for i in range(5)]
    return recs


@pytest.mark.parametrize(("k", "normal", "anomalous"), [(1, 1, 0), (2, 1, 1), (3, 2, 1), (8, 4, 4)])
def test_few_shot_balanced(k: int, normal: int, anomalous: int) -> None:
    shots = sample_few_shot(shot_pool(), k, seed=111)
    for c in ("cable", "screw"):
        labels = [r.label for r in shots if r.class_name == c]
        assert labels.count(0) == normal and labels.count(1) == anomalous


def test_few_shot_seeded_and_deterministic(tmp_path: Path) -> None:
    pool = shot_pool()
    a = sample_few_shot(pool, 4, seed=1)
    assert a == sample_few_shot(pool, 4, seed=1)
    shuffled = pool[:]
    random.Random(0).shuffle(shuffled)
    assert set(sample_few_shot(shuffled, 4, seed=1)) == set(a)  # order does not matter
    assert any(set(sample_few_shot(pool, 4, seed=s)) != set(a) for s in range(2, 6))
    path = write_few_shot(pool, 4, 1, tmp_path / "meta")
    assert path == tmp_path / "meta" / "4-shot.jsonl" and read_records(path) == a


def test_few_shot_errors() -> None:
    pool = shot_pool() + [Record("tiny/good/0.png", 0, "tiny")]
    with pytest.raises(
        RecordError,
        match=r"class 'tiny': 2-shot needs 1 anomalous images, "
        r"found 0",
    ):
        sample_few_shot(pool, 2, seed=0)
    with pytest.raises(RecordError, match="'cable': 16-shot needs 8 normal"):
        sample_few_shot(shot_pool(), 16, seed=0)
    with pytest.raises(ValueError, match="positive"):
        sample_few_shot(shot_pool(), 0, seed=0)
