"""Overlays a person can read: image, heat map with a colour bar, predicted mask, side by side.

Each panel shows the image at its own aspect (the map is resized back from the model's square
input), and the figure is drawn at about the image's own pixel height (within 240..900 px a
panel). The title states the score and the label, or that there is no calibration. Plain
matplotlib `Figure` objects: no pyplot state, safe in threads and notebooks.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from aaclip.fileio import atomic_write

if TYPE_CHECKING:
    from aaclip.predict import Result

PANEL_INCHES = 3.2  # panel height (taller for images narrower than MIN_PANEL_WIDTH)
MIN_PANEL_WIDTH = 2.2  # inches, so that the panel titles fit
MIN_PX, MAX_PX = 240, 900  # panel height in pixels when saved
PREDICTED, TRUTH = "#ff2d2d", "#2dff5a"


def at_size(array, size: tuple[int, int], *, mask: bool = False) -> np.ndarray:
    """A map (bilinear) or a mask (`mask=True`: nearest, bool) resized to an image's own
    (width, height), as (H, W): every map and mask is drawn on its picture's pixel grid, never
    on another size's (a 64 px map on a 128 px tile would fill its top-left quarter)."""
    a = np.asarray(array.detach().cpu().numpy() if hasattr(array, "detach") else array)
    w, h = size
    if mask:
        a = a > 0.5 if a.dtype != bool else a
        if a.shape != (h, w):
            img = Image.fromarray(a.astype(np.uint8) * 255)
            a = np.asarray(img.resize((w, h), Image.Resampling.NEAREST)) > 127
        return a
    from aaclip.predict import resize_map

    return resize_map(a.astype(np.float32, copy=False), (w, h))


def _contour(ax, mask: np.ndarray | None, colour: str, size: tuple[int, int]) -> bool:
    """Draw the outline of a binary mask; False when there is nothing to outline."""
    if mask is None:
        return False
    mask = at_size(mask, size, mask=True)
    if not mask.any() or mask.all():
        return False
    ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.4)
    return True


def title(result: Result, true_label: str | None = None) -> str:
    """'photo.png (bottle): score 0.731 (raw 0.5123) → anomalous', or the uncalibrated form;
    with `true_label` (records) '; truth: normal' is added."""
    name = Path(result.image).name
    head = f"{name} ({result.class_name})"
    if result.normalised is None:
        text = f"{head}: raw score {result.score:.4g}; no calibration, so no label"
    else:
        text = f"{head}: score {result.normalised:.3f} (raw {result.score:.4g}) → {result.label}"
    return text + (f"; truth: {true_label}" if true_label else "")


def _layout(aspect: float) -> tuple[Figure, list, object]:
    """Three panels of the image's aspect and a colour bar, placed by hand in inches (a fixed
    layout is several times faster to draw than matplotlib's constrained layout)."""
    pw = max(PANEL_INCHES * aspect, MIN_PANEL_WIDTH)  # a tall image gets taller panels
    ph = pw / aspect
    margin, gap, top, bottom = 0.08, 0.12, 0.62, 0.08
    bar_gap, bar_w, bar_labels = 0.08, 0.14, 1.05  # colour bar and its tick labels and title
    width = 2 * margin + 3 * pw + 2 * gap + bar_gap + bar_w + bar_labels
    height = bottom + ph + top
    fig = Figure(figsize=(width, height))

    def box(x: float, w_in: float, h_in: float = ph, y: float = bottom) -> list[float]:
        return [x / width, y / height, w_in / width, h_in / height]

    x1 = margin + pw + gap
    x2 = x1 + pw + bar_gap + bar_w + bar_labels
    axes = [fig.add_axes(box(x, pw)) for x in (margin, x1, x2)]
    bar_ax = fig.add_axes(box(x1 + pw + bar_gap, bar_w, 0.9 * ph, bottom + 0.05 * ph))
    return fig, axes, bar_ax


def figure(
    image: Image.Image,
    result: Result,
    truth: np.ndarray | None = None,
    true_label: str | None = None,
) -> Figure:
    """Image | heat map with colour bar | predicted mask contour (and ground truth), at the
    image's own aspect, titled with the score and label.

    The heat map is the normalised map (0..1, the pixel threshold at 0.5) when calibrated,
    else the raw map on its own range. `truth`: a (H, W) bool ground-truth mask, drawn green;
    `true_label`: the record's label, added to the title.
    """
    w, h = image.size
    rgb = np.asarray(image.convert("RGB"))
    fig, axes, bar_ax = _layout(w / h)
    panel_inches = fig.axes[0].get_position().height * fig.get_figheight()
    fig.set_dpi(float(np.clip(h, MIN_PX, MAX_PX)) / panel_inches)
    for ax in axes:
        ax.imshow(rgb, interpolation="nearest")
        ax.set_axis_off()
    axes[0].set_title("image", fontsize=9)

    calibrated = result.normalised_map is not None
    heat = at_size(result.normalised_map if calibrated else result.map, (w, h))
    lo, hi = (0.0, 1.0) if calibrated else (float(heat.min()), float(heat.max()))
    norm = Normalize(lo, hi if hi > lo else lo + 1e-6)
    axes[1].imshow(heat, cmap="jet", norm=norm, alpha=0.5)
    opaque = ScalarMappable(norm=norm, cmap="jet")  # the bar in full colour, not blended
    if calibrated:
        bar = fig.colorbar(opaque, cax=bar_ax, ticks=[0, 0.5, 1])
        bar.ax.set_yticklabels(["0", "0.5 threshold", "1"], fontsize=7)
        bar.set_label("normalised anomaly", fontsize=8)
        axes[1].set_title("anomaly map", fontsize=9)
    else:
        bar = fig.colorbar(opaque, cax=bar_ax)
        bar.ax.tick_params(labelsize=7)
        bar.set_label("raw anomaly (not calibrated)", fontsize=8)
        axes[1].set_title("raw anomaly map", fontsize=9)

    handles = []
    if result.mask is not None:
        _contour(axes[2], result.mask, PREDICTED, (w, h))
        handles.append(Line2D([], [], color=PREDICTED, label="predicted"))
    if truth is not None:
        _contour(axes[2], np.asarray(truth, bool), TRUTH, (w, h))
        handles.append(Line2D([], [], color=TRUTH, label="ground truth"))
    if result.mask is None:
        axes[2].set_title("no mask (not calibrated)", fontsize=9)
    else:
        share = float(result.mask.mean())
        axes[2].set_title(f"predicted mask ({100 * share:.1f}%)", fontsize=9)
    if handles:
        axes[2].legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.7)
    colour = {"anomalous": "#b00000", "normal": "#006000"}.get(result.label or "", "black")
    fig.suptitle(title(result, true_label), fontsize=10, color=colour, y=0.985, va="top")
    return fig


def to_png(fig: Figure) -> bytes:
    """PNG bytes without software/date metadata (the same figure gives the same bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def save(fig: Figure, path: str | Path) -> Path:
    """Write a figure as PNG, atomically."""
    atomic_write(path, to_png(fig))
    return Path(path)
