"""Figures for dozens of genres: at 28 genres every tick label, matrix cell and legend entry is drawn
at a readable size, inside the figure, without overlapping its neighbours; 4 genres keep their sizes."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

from genre_lightning.results import figures
from tests.helpers.genres import KAGGLE_GENRES

MIN_POINTS = 6  # smallest font we call legible on a 100 dpi PNG
MAX_PIXELS = 3000  # no side longer than this


def rendered(figure):
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return canvas.get_renderer()


def assert_legible(texts: list[Text], renderer, figure, what: str) -> None:
    """Non-empty texts: big enough, inside the figure, and no two overlapping."""
    shown = [t for t in texts if t.get_visible() and t.get_text()]
    assert shown, what
    boxes = [t.get_window_extent(renderer) for t in shown]
    page = figure.bbox
    for text, box in zip(shown, boxes, strict=True):
        assert text.get_fontsize() >= MIN_POINTS, (what, text.get_text(), text.get_fontsize())
        assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1 and page.y0 - 1 <= box.y0 and box.y1 <= page.y1 + 1, (
            what, text.get_text(),
        )  # fmt: skip
    for i, a in enumerate(boxes):
        for j in range(i + 1, len(boxes)):
            b = boxes[j]
            overlap_x = min(a.x1, b.x1) - max(a.x0, b.x0)
            overlap_y = min(a.y1, b.y1) - max(a.y0, b.y0)
            assert overlap_x <= 0.5 or overlap_y <= 0.5, (what, shown[i].get_text(), shown[j].get_text())


def size_in_pixels(figure) -> tuple[float, float]:
    width, height = figure.get_size_inches() * figures.DPI
    return width, height


def test_a_28_genre_confusion_matrix_is_legible():
    genres = len(KAGGLE_GENRES)
    matrix = np.random.default_rng(0).integers(0, 300, (genres, genres))
    figure = figures.confusion_matrix_figure(matrix, KAGGLE_GENRES, "test")
    renderer = rendered(figure)
    assert max(size_in_pixels(figure)) <= MAX_PIXELS
    for ax in figure.axes:
        if not ax.get_xticklabels():
            continue
        assert [t.get_text() for t in ax.get_xticklabels()] == KAGGLE_GENRES
        assert_legible(ax.get_xticklabels(), renderer, figure, "x ticks")
        assert_legible(ax.get_yticklabels(), renderer, figure, "y ticks")
        cells = [t for t in ax.texts if t.get_text()]
        assert len(cells) == genres * genres
        for row in range(genres):  # each row of cell values: readable, no value running into the next
            assert_legible(cells[row * genres : (row + 1) * genres], renderer, figure, f"cells of row {row}")


def test_a_28_genre_distribution_and_precision_recall_figure_are_legible():
    genres = len(KAGGLE_GENRES)
    rng = np.random.default_rng(1)
    figure = figures.distribution_figure(rng.integers(0, 5000, genres), rng.integers(0, 5000, genres), KAGGLE_GENRES)
    renderer = rendered(figure)
    (ax,) = figure.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == KAGGLE_GENRES
    assert_legible(ax.get_xticklabels(), renderer, figure, "genres")
    assert max(size_in_pixels(figure)) <= MAX_PIXELS

    curves = [(np.linspace(1, 0.2, 20), np.linspace(0, 1, 20))] * genres
    figure = figures.precision_recall_figure(curves, [0.5] * genres, [(0.5, 0.5, 0.5)] * genres, KAGGLE_GENRES)
    renderer = rendered(figure)
    (ax,) = figure.axes
    legend = ax.get_legend().get_texts()
    assert len(legend) == genres and all(g in t.get_text() for g, t in zip(KAGGLE_GENRES, legend, strict=True))
    assert_legible(legend, renderer, figure, "legend")
    assert max(size_in_pixels(figure)) <= MAX_PIXELS


@pytest.mark.parametrize(
    ("draw", "size"),
    [
        (lambda g: figures.confusion_matrix_figure(np.eye(len(g), dtype=int), g), figures.CONFUSION_SIZE),
        (lambda g: figures.distribution_figure([1] * len(g), [1] * len(g), g), figures.DISTRIBUTION_SIZE),
    ],
)
def test_four_genres_keep_the_fixed_sizes(draw, size):
    assert tuple(draw(["Action", "Comedy", "Horror", "Romance"]).get_size_inches()) == size
