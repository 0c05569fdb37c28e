"""Overlays at the image's own size and aspect, with colour bar, mask contours, score, label."""

from __future__ import annotations

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
