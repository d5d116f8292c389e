"""Plotting only: each function turns numbers or images into a matplotlib ``Figure``.

Figures are built with the object-oriented API (no pyplot state, no display needed) and
saved at ``DPI``, so a figure of ``figsize`` (w, h) inches is a ``w*DPI x h*DPI`` PNG. Up to
``FEW_GENRES`` genres the sizes are fixed; with more, figures grow with the number of genres G
(``per_genre_size``), so that at G=28 every cell, tick label and legend entry is still drawn at a
readable size without overlapping its neighbours (``tests/results/test_figures.py`` checks it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

DPI = 100
CONFUSION_SIZE = (11.0, 5.0)
DISTRIBUTION_SIZE = (7.0, 4.5)
RELIABILITY_SIZE = (6.0, 7.0)
GRID_CELL = (2.2, 3.0)  # inches per image, caption included
GRID_TITLE = 0.5  # inches above the grid for its title
FEW_GENRES = 8  # up to this many genres: the fixed sizes above, horizontal tick labels
MATRIX_CELL = 0.42  # inches per row/column of a matrix panel beyond FEW_GENRES (0.42 in = 42 px)
BAR_GROUP = 0.45  # inches per genre of the distribution bars beyond FEW_GENRES
SMALL_FONT = 7  # points: cell values and tick labels of large matrices


def per_genre_size(genres: int, base: float, per_genre: float, extra: float = 0.0) -> float:
    """``base`` inches, or ``per_genre`` inches per genre (plus ``extra``) when that is larger."""
    return max(base, per_genre * genres + extra)


def save_png(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def confusion_matrix_figure(
    matrix: np.ndarray, classes: Sequence[str], title: str = "", row_totals: np.ndarray | None = None
) -> Figure:
    """Counts (left) and row-normalised fractions (right): rows are the true genre.

    ``row_totals`` (multi-label co-occurrence): the images that carry each row's genre, which the
    rows are divided by; by default each row's own sum (single-label: recall on the diagonal)."""
    many = len(classes) > FEW_GENRES
    side = per_genre_size(len(classes), CONFUSION_SIZE[1], MATRIX_CELL, 1.6)  # one square panel, labels included
    figure = Figure(figsize=(max(CONFUSION_SIZE[0], 2 * side + 1), side), layout="constrained")
    counts_ax, normalised_ax = figure.subplots(1, 2)
    totals = matrix.sum(axis=1, keepdims=True) if row_totals is None else np.asarray(row_totals).reshape(-1, 1)
    normalised = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    for ax, values, fmt, name in (
        (counts_ax, matrix, "d", "counts"),
        (normalised_ax, normalised, ".2f", "row-normalised (recall on the diagonal)"),
    ):
        display = ConfusionMatrixDisplay(values, display_labels=list(classes))
        display.plot(
            ax=ax,
            values_format=fmt,
            cmap="Blues",
            colorbar=False,
            xticks_rotation="vertical" if many else "horizontal",
            text_kw={"fontsize": SMALL_FONT} if many else None,
        )
        if many:
            ax.tick_params(labelsize=SMALL_FONT + 1)
        ax.set_title(name)
        ax.set_xlabel("predicted genre")
        ax.set_ylabel("true genre")
    images = int(matrix.sum()) if row_totals is None else None
    figure.suptitle(f"{title or 'Confusion matrix'}" + (f" ({images} images)" if images is not None else ""))
    return figure


def precision_recall_figure(
    curves: Sequence[tuple[np.ndarray, np.ndarray]],
    average_precision: Sequence[float],
    operating_points: Sequence[tuple[float, float, float]],
    classes: Sequence[str],
    title: str = "",
) -> Figure:
    """One precision-recall curve per genre, with its AP and the point its decision threshold picks
    (``operating_points``: recall, precision, threshold)."""
    columns = max(1, math.ceil(len(classes) / 16))  # legend columns beside the plot with many genres
    many = len(classes) > FEW_GENRES
    width = DISTRIBUTION_SIZE[0] + (2.8 * columns if many else 0)
    figure = Figure(figsize=(width, DISTRIBUTION_SIZE[1] + (1.5 if many else 0)), layout="constrained")
    ax = figure.subplots()
    for (precision, recall), ap, (r, p, t), name in zip(
        curves, average_precision, operating_points, classes, strict=True
    ):
        (line,) = ax.plot(recall, precision, drawstyle="steps-post", label=f"{name} (AP {ap:.3f}, t={t:.2f})")
        ax.plot([r], [p], "o", color=line.get_color())
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title or "Precision-recall per genre (dots: the decision thresholds)")
    if many:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=SMALL_FONT, ncols=columns)
    else:
        ax.legend(loc="lower left", fontsize=8)
    return figure


def distribution_figure(true_counts: Sequence[int], predicted_counts: Sequence[int], classes: Sequence[str]) -> Figure:
    """How often each genre is true and how often it is predicted, side by side."""
    many = len(classes) > FEW_GENRES
    width = per_genre_size(len(classes), DISTRIBUTION_SIZE[0], BAR_GROUP, 1.5)
    figure = Figure(figsize=(width, DISTRIBUTION_SIZE[1] + (1.2 if many else 0)), layout="constrained")
    ax = figure.subplots()
    x = np.arange(len(classes))
    width = 0.4
    for offset, counts, label, color in (
        (-width / 2, true_counts, "true", "#4c72b0"),
        (width / 2, predicted_counts, "predicted", "#dd8452"),
    ):
        bars = ax.bar(x + offset, counts, width, label=label, color=color)
        ax.bar_label(bars, fontsize=SMALL_FONT if many else 8, rotation=90 if many else 0)
    ax.set_xticks(x, list(classes), rotation=90 if many else 0)
    ax.set_ylabel("images")
    ax.set_title(f"Predicted vs true genre ({int(sum(true_counts))} images)")
    ax.legend()
    return figure


def reliability_figure(
    bins: pd.DataFrame,
    ece: float | None,
    before: pd.DataFrame | None = None,
    ece_before: float | None = None,
    temperature: float | None = None,
) -> Figure:
    """Accuracy against confidence per bin (top), and how many images fall in each bin (bottom).
    ``before``: the same bins before temperature scaling (``temperature``), drawn as a line."""
    figure = Figure(figsize=RELIABILITY_SIZE, layout="constrained")
    top, bottom = figure.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    width = bins["upper"] - bins["lower"]
    filled = bins["count"] > 0
    centres = (bins["lower"] + bins["upper"]) / 2
    top.bar(bins["lower"][filled], bins["accuracy"][filled], width[filled], align="edge", edgecolor="black",
            color="#4c72b0", label="accuracy in the bin")  # fmt: skip
    top.plot(centres[filled], bins["confidence"][filled], "o", color="#c44e52", label="mean confidence in the bin")
    title = "Reliability diagram" + (f" (ECE {ece:.3f})" if ece is not None else "")
    if before is not None:
        shown = before["count"] > 0
        top.plot(before["confidence"][shown], before["accuracy"][shown], "s-", color="#dd8452",
                 label="before temperature scaling")  # fmt: skip
        title += f"\nT={temperature:.3g}" + (f"; before scaling ECE {ece_before:.3f}" if ece_before is not None else "")
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left")
    top.set_title(title)
    bottom.bar(bins["lower"], bins["count"], width, align="edge", color="gray", edgecolor="black")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (top-1 probability)")
    bottom.set_ylabel("images")
    return figure


def grid_shape(count: int, columns: int) -> tuple[int, int]:
    """(rows, columns) of a grid of ``count`` images at most ``columns`` wide."""
    columns = max(1, min(columns, count))
    return max(1, math.ceil(count / columns)), columns


def image_grid(
    images: Sequence[np.ndarray],
    captions: Sequence[str],
    title: str,
    columns: int = 6,
    caption_color: str = "black",
) -> Figure:
    """Images (H, W, 3 arrays in [0, 1] or uint8) in a grid, each with its caption above it."""
    rows, columns = grid_shape(len(images), columns)
    figure = Figure(figsize=(columns * GRID_CELL[0], rows * GRID_CELL[1] + GRID_TITLE), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, caption in zip(axes, images, captions, strict=False):
        ax.imshow(image)
        ax.set_title(caption, fontsize=8, color=caption_color)
    if not images:
        axes[0].text(0.5, 0.5, "nothing to show", ha="center", va="center", transform=axes[0].transAxes)
    figure.suptitle(title)
    return figure


def to_display(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised (3, H, W) model input back to an (H, W, 3) picture in [0, 1]."""
    mean_t = torch.tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image * std_t + mean_t).clamp(0, 1).permute(1, 2, 0).cpu().numpy()
