"""Figures of the notebooks: legends kept off the data and labels, bars from zero, maps with
colour bars. Every function draws on a matplotlib `Figure` (no pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from aaclip import data
from aaclip.analysis.alignment import pick_examples


def legend_below(ax: Any, ncol: int = 3, offset: float = -0.3) -> None:
    """Move a seaborn legend under the axes (below the tick labels), so it never covers
    bars or labels; `offset` is in axes fractions from the bottom."""
    import seaborn as sns

    sns.move_legend(
        ax, "upper center", bbox_to_anchor=(0.5, offset), ncol=ncol, frameon=False, title=None
    )


def legend_right(ax: Any) -> None:
    """Move a seaborn legend to the right of the axes, outside the plotting area."""
    import seaborn as sns

    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def plot_loss(ax: Any, log: pd.DataFrame, stage: int, title: str) -> None:
    """Mean training loss per epoch of one stage, from `read_train_log`."""
    part = log[log["stage"] == stage]
    ax.plot(part["epoch"], part["loss"], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean loss")
    ax.set_xticks(part["epoch"].tolist())
    ax.set_title(title, fontsize=9)


def qualitative_grid(
    predictions: dict[Any, dict[str, dict[str, Any]]],
    image_size: int,
    model_labels: dict[str, str],
    title: str,
    n_anomalous: int = 1,
    n_normal: int = 1,
) -> Figure:
    """Columns: examples of each held-out class; rows: image, ground truth, one map per model.

    Maps are the evaluation maps (normalised over each class's test images, in [0, 1]; one
    colour bar for all); the ground-truth outline is drawn in white on the maps of anomalous
    images. Models may come from separate passes over the same records (same order). Every
    map and mask is resized to its tile (`image_size`) first: models of other input sizes
    (IQE-CLIP's 64 px beside 128 px) cover the whole tile, not a corner of it.
    """
    from aaclip.overlays import at_size

    tile = (image_size, image_size)
    columns = []  # (test set, class, index)
    for ts, per_model in predictions.items():
        first = next(iter(per_model.values()))
        for cls, pred in first.items():
            columns += [(ts, cls, i) for i in pick_examples(pred, n_anomalous, n_normal)]
    n_rows = 2 + len(model_labels)
    fig = Figure(figsize=(1.35 * len(columns) + 1.6, 1.4 * n_rows + 0.9), layout="constrained")
    axes = fig.subplots(n_rows, len(columns), squeeze=False)
    for col, (ts, cls, i) in enumerate(columns):
        pred = next(iter(predictions[ts].values()))[cls]
        img = data.load_image(ts.root / pred.image_paths[i]).resize((image_size, image_size))
        axes[0, col].imshow(np.asarray(img))
        kind = "anomalous" if pred.labels[i] == 1 else "normal"
        axes[0, col].set_title(f"{cls}\n{kind}", fontsize=7)
        truth = at_size(pred.masks[i], tile, mask=True)
        axes[1, col].imshow(truth, cmap="gray", vmin=0, vmax=1)
        for row, key in enumerate(model_labels, start=2):
            m = at_size(predictions[ts][key][cls].maps[i], tile)
            axes[row, col].imshow(np.asarray(img), alpha=0.5)
            axes[row, col].imshow(m, cmap="jet", vmin=0, vmax=1, alpha=0.55)
            if pred.labels[i] == 1 and truth.any() and not truth.all():
                axes[row, col].contour(
                    truth.astype(np.float32), levels=[0.5], colors="w", linewidths=0.7
                )
    row_names = ["image", "ground truth", *model_labels.values()]
    for row, ax_row in enumerate(axes):
        ax_row[0].set_ylabel(row_names[row], fontsize=8)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
    bar = fig.colorbar(
        ScalarMappable(Normalize(0, 1), cmap="jet"), ax=axes[2:, :].ravel().tolist(),
        shrink=0.9, pad=0.01,
    )  # fmt: skip
    bar.set_label("anomaly score\n(normalised per class)", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def heatmaps(
    matrices: dict[str, pd.DataFrame], title: str, vmin: float = -1.0, vmax: float = 1.0
) -> Figure:
    """Side-by-side heat maps with one shared colour bar (e.g. cos before / after)."""
    n = len(matrices)
    size = len(next(iter(matrices.values())))
    side = min(7.0, 2.2 + 0.22 * size)
    fig = Figure(figsize=(side * n + 1.0, side + 0.6), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    image = None
    for ax, (name, m) in zip(axes, matrices.items(), strict=True):
        image = ax.imshow(m.to_numpy(), cmap="RdBu_r", vmin=vmin, vmax=vmax)
        ticks = np.arange(len(m))
        ax.set_xticks(ticks, m.columns, rotation=90, fontsize=6)
        ax.set_yticks(ticks, m.index, fontsize=6)
        k = len(m) // 2
        ax.axhline(k - 0.5, color="k", lw=0.8)
        ax.axvline(k - 0.5, color="k", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.grid(False)
    bar = fig.colorbar(image, ax=list(axes), shrink=0.8)
    bar.set_label("cosine similarity", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


def tsne_panels(panels: dict[str, tuple[pd.DataFrame, np.ndarray]], title: str) -> Figure:
    """One t-SNE scatter per text encoder: colour = state, marker = seen / unseen classes."""
    import seaborn as sns

    fig = Figure(figsize=(5.2 * len(panels) + 1.8, 5.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for i, (ax, (name, (rows, xy))) in enumerate(zip(axes, panels.items(), strict=True)):
        df = rows.assign(x=xy[:, 0], y=xy[:, 1])
        sns.scatterplot(
            df, x="x", y="y", hue="state", style="classes", ax=ax, s=22, alpha=0.8,
            palette={"normal": "C0", "abnormal": "C3"}, legend=i == len(panels) - 1,
        )  # fmt: skip
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.set_xticks([])
        ax.set_yticks([])
    legend_right(axes[-1])
    fig.suptitle(title, fontsize=9)
    return fig


def shots_axis_order(labels: Sequence[str]) -> list[str]:
    """Shot labels in increasing order, 'full' last."""
    return sorted(set(labels), key=lambda s: (s == "full", int(s) if s != "full" else 0))
