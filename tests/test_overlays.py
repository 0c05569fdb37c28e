"""Overlays at the image's own size and aspect, with colour bar, mask contours, score, label."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from aaclip.calibration import calibrate
from aaclip.overlays import figure, to_png
from aaclip.predict import Result

H, W = 40, 60


def _result(calibrated: bool) -> Result:
    raw = np.zeros((H, W), np.float32)
    raw[10:20, 20:40] = 5.0
    r = Result("photos/a.png", "bottle", (W, H), 0.8, raw)
    if calibrated:
        rng = np.random.default_rng(0)
        cal = calibrate(rng.random(50), rng.random((50, 8, 8)).astype(np.float32), fpr=0.1)
        r.calibration, r.normalised, r.label = cal, float(cal.normalise_score(0.8)), "anomalous"
        r.mask, r.normalised_map = cal.mask(raw), cal.normalise_map(raw).astype(np.float32)
    return r


def _panels(fig: Figure):
    return [ax for ax in fig.axes if ax.images and ax.get_title() != ""]


def test_calibrated_overlay_is_readable_at_the_images_aspect():
    image = Image.fromarray(np.full((H, W, 3), 120, np.uint8))
    truth = np.zeros((H, W), bool)
    truth[12:18, 22:38] = True
    fig = figure(image, _result(True), truth=truth, true_label="anomalous")
    assert isinstance(fig, Figure)
    panels = _panels(fig)
    assert [ax.get_title() for ax in panels] == [
        "image", "anomaly map", "predicted mask (8.3%)"
    ]  # fmt: skip
    for ax in panels:
        assert ax.images[0].get_array().shape[:2] == (H, W)  # the image's own size
        box = ax.get_position()
        ratio = box.width * fig.get_figwidth() / (box.height * fig.get_figheight())
        assert abs(ratio - W / H) < 0.01  # its own aspect, not the model's square
    assert panels[1].images[1].get_array().shape == (H, W)  # the heat map, resized back
    bar = [ax for ax in fig.axes if ax not in panels]
    assert len(bar) == 1 and bar[0].get_ylabel() == "normalised anomaly"
    assert len(panels[2].collections) == 2  # predicted and ground-truth contours
    title = fig._suptitle.get_text()
    score = _result(True).normalised
    assert title == f"a.png (bottle): score {score:.3f} (raw 0.8) → anomalous; truth: anomalous"
    png = to_png(fig)
    with Image.open(__import__("io").BytesIO(png)) as im:
        assert im.width > im.height * 2  # three panels side by side
    assert to_png(figure(image, _result(True), truth, "anomalous")) == png  # same input, same bytes


def test_uncalibrated_overlay_says_so():
    image = Image.fromarray(np.full((H, W, 3), 120, np.uint8))
    fig = figure(image, _result(False))
    panels = _panels(fig)
    assert [ax.get_title() for ax in panels][1:] == ["raw anomaly map", "no mask (not calibrated)"]
    assert fig._suptitle.get_text() == "a.png (bottle): raw score 0.8; no calibration, so no label"
    bar = [ax for ax in fig.axes if ax not in panels][0]
    assert bar.get_ylabel() == "raw anomaly (not calibrated)"


def test_a_map_of_another_size_is_drawn_over_the_whole_image():
    image = Image.fromarray(np.full((H, W, 3), 120, np.uint8))
    r = _result(True)
    small = np.zeros((8, 8), np.float32)
    small[:, 4:] = 1.0  # the right half: a map at the model's size, not the image's
    r.map, r.normalised_map, r.mask = small, small, small > 0.5
    fig = figure(image, r, truth=np.ones((4, 4), bool) & np.eye(4, dtype=bool))
    heat = _panels(fig)[1].images[1].get_array()
    assert heat.shape == (H, W)
    assert heat[:, : W // 2 - 2].max() < 0.5 and heat[:, W // 2 + 2 :].min() > 0.5


def test_every_map_of_the_grid_fills_its_tile(tmp_path):
    """IQE-CLIP's 64 px maps beside 128 px ones: each is drawn on the whole tile."""
    import torch

    from aaclip.analysis.plots import qualitative_grid

    tile = 32
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(tmp_path / "a.png")

    class Set:
        root = tmp_path

    def pred(size: int):
        maps = torch.zeros(1, size, size)
        maps[0, size // 2 :, size // 2 :] = 1.0  # bottom-right quarter anomalous
        masks = torch.zeros(1, size, size, dtype=torch.bool)
        masks[0, size // 2 :, size // 2 :] = True
        return SimpleNamespace(maps=maps, masks=masks, labels=np.array([1]), image_paths=["a.png"])

    ts = Set()
    predictions = {ts: {"small": {"c": pred(16)}, "big": {"c": pred(tile)}}}
    fig = qualitative_grid(predictions, tile, {"small": "16 px", "big": "32 px"}, "maps")
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 4  # image, ground truth, two maps
    for ax in axes[1:]:
        drawn = np.asarray(ax.images[-1].get_array(), dtype=np.float32)
        assert drawn.shape == (tile, tile), ax.get_ylabel()
        half = tile // 2
        assert drawn[: half - 2, :].max() < 0.5 and drawn[half + 2 :, half + 2 :].min() > 0.5
