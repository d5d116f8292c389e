"""Grids of posters a test run shows: the most confident mistakes (also under the class-activation
map of the genre the model predicted, ``inference/explain.py``) and training samples after the
training transform. ``run_artifacts.TestArtifacts`` writes them into ``figures/``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from lightning.pytorch import LightningModule
from matplotlib.figure import Figure

from genre_lightning.data.dataset import PosterDataset
from genre_lightning.inference.explain import explain
from genre_lightning.inference.predictor import Predictor
from genre_lightning.results import figures
from genre_lightning.results.tables import Predictions
from genre_lightning.results.thumbnails import THUMBNAIL, short_name, thumbnail

MAX_SAMPLES = 32  # training samples shown in all, with more than figures.FEW_GENRES genres
SAMPLE_COLUMNS = 8


class ShownMistake(NamedTuple):
    """One poster of the mistakes grid, as its caption states it."""

    file_path: str
    true: str
    predicted: str
    p_top1: float


def mistakes_cam_figure(
    pl_module: LightningModule, shown: Sequence[ShownMistake], method: str, split: str, columns: int
) -> Figure:
    """The mistakes grid again (``shown``), each poster as the network saw it under the map of the genre
    it predicted."""
    predictor = Predictor.from_module(pl_module)
    explained = explain(predictor, [m.file_path for m in shown], method=method)
    images = [
        np.asarray(e.overlay(side=THUMBNAIL)) if e.error is None else np.ones((THUMBNAIL, THUMBNAIL, 3))
        for e in explained
    ]
    title = f"Most confident mistakes, {split} split: {method} map of the predicted genre"
    captions = [_caption(m) for m in shown]
    return figures.image_grid(images, captions, title, columns=columns, caption_color="#b00020")


def train_samples_figure(
    dataset: PosterDataset, classes: Sequence[str], data_config: Mapping, samples_per_class: int
) -> Figure:
    """``samples_per_class`` training images per genre, through the training transform, one row per genre
    (with dozens of genres: ``MAX_SAMPLES`` images in all, ``SAMPLE_COLUMNS`` a row)."""
    # One row per genre for a few genres; with dozens, fewer per genre in a wrapped grid (28 rows
    # of posters would be a figure 8,000 px tall).
    many = len(classes) > figures.FEW_GENRES
    per_genre = max(1, min(samples_per_class, MAX_SAMPLES // len(classes))) if many else samples_per_class
    mean, std = data_config["mean"], data_config["std"]
    targets = np.asarray(dataset.targets)
    rng = np.random.default_rng(0)
    images, captions = [], []
    for label, name in enumerate(classes):
        members = np.flatnonzero(targets == label)
        for index in rng.permutation(members)[:per_genre].tolist():
            item = dataset[index]
            if not isinstance(item, dict):
                continue  # unreadable file: the data report lists it
            images.append(figures.to_display(item["image"], mean, std))
            captions.append(f"{name}\n{short_name(dataset.paths[index])}")
    columns = SAMPLE_COLUMNS if many else samples_per_class
    title = "Training samples after the training transform (de-normalised)"
    return figures.image_grid(images, captions, title, columns=columns)


def mistakes_figure(
    predictions: Predictions, split: str, max_mistakes: int, columns: int
) -> tuple[Figure, list[ShownMistake]]:
    """The most confident mistakes grid, and what it shows, in drawing order (highest ``p_top1`` first)."""
    mistakes = predictions.most_confident_mistakes(max_mistakes)
    total_wrong = int((~predictions.top1_correct).sum())
    truth = "labels" if predictions.multilabel else "label"  # multi-label: a mistake's top genre is not a true one
    shown = [ShownMistake(r.file_path, getattr(r, truth), r.top1, float(r.p_top1)) for r in mistakes.itertuples()]
    images = [thumbnail(m.file_path) for m in shown]
    captions = [_caption(m) for m in shown]
    title = f"Most confident mistakes, {split} split: {len(images)} of {total_wrong} shown"
    figure = figures.image_grid(images, captions, title, columns=columns, caption_color="#b00020")
    return figure, shown


def _caption(mistake: ShownMistake) -> str:
    return f"True: {mistake.true} /\nPred: {mistake.predicted} ({mistake.p_top1:.3f})\n{short_name(mistake.file_path)}"
