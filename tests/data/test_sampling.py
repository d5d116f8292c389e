"""Balanced sampling: every genre drawn about equally often, over the genres of each image in multi-label mode."""

from __future__ import annotations

import numpy as np
import torch

from genre_lightning.data.datamodule import balanced_weights
from genre_lightning.data.dataset import PosterDataset


def genre_shares(label_sets: list[list[int]], weights: np.ndarray, genres: int) -> np.ndarray:
    """Each genre's expected share of the drawn genre labels when image i is drawn with weight w_i."""
    mass = np.zeros(genres)
    for genres_of_image, weight in zip(label_sets, weights, strict=True):
        mass[genres_of_image] += weight
    return mass / mass.sum()


def test_multilabel_weights_are_the_mean_inverse_count_of_each_images_genres_and_even_out_rare_genres():
    rng = np.random.default_rng(0)
    # Genre 0 on most posters, genre 3 on a few, and always beside genre 0.
    label_sets = [[0] for _ in range(300)] + [[0, 1] for _ in range(80)] + [[2] for _ in range(40)]
    label_sets += [[0, 3] for _ in range(6)]
    rng.shuffle(label_sets)
    dataset = PosterDataset(
        ["x"] * len(label_sets), [s[0] for s in label_sets], lambda x: x, label_sets, 4, multi_hot=True
    )
    weights = balanced_weights(dataset, 4).numpy()
    counts = np.bincount([g for s in label_sets for g in s], minlength=4)
    assert np.allclose(weights, [np.mean(1 / counts[s]) for s in label_sets])
    plain = genre_shares(label_sets, np.ones(len(label_sets)), 4)
    balanced = genre_shares(label_sets, weights, 4)
    assert plain[3] < 0.02 and balanced[3] > 0.1  # the rare genre is drawn far more often
    assert balanced.max() / balanced.min() < plain.max() / plain.min() / 10


def test_single_label_weights_are_one_over_the_genre_count():
    targets = [0] * 6 + [1] * 3 + [2]
    dataset = PosterDataset(["x"] * 10, targets, lambda x: x)
    assert torch.allclose(balanced_weights(dataset, 3), torch.tensor([1 / 6] * 6 + [1 / 3] * 3 + [1.0]))
