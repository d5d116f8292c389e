"""Dozens of genres: a 28-genre multi-label CSV in the Kaggle layout (``file_path,labels`` with
``Comedy|Drama|Romance`` values, genres that only appear beside others) through genre-train, as a
user runs it: the split keeps every genre, the one-vs-rest probe fits a head, balanced sampling
draws over the label sets, and the figures stay readable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genre_lightning.utils.csvio import read_csv
from tests.helpers.cli import run_cli
from tests.helpers.configs import FAST
from tests.helpers.genres import KAGGLE_GENRES

pytestmark = pytest.mark.slow

# Genres that never come first in a poster's labels (the CSV lists genres in any order; every
# poster carrying these also carries an earlier genre): the check that once counted first genres only.
ONLY_BESIDE = {"Talk-Show": "Comedy", "News": "Documentary", "Western": "Action"}


def kaggle_csv(folder: Path, per_genre: int = 5, seed: int = 0) -> Path:
    """Small noisy JPEGs, each tinted by its first genre, and ``labels.csv`` with 1-3 genres each."""
    rng = np.random.default_rng(seed)
    leads = [g for g in KAGGLE_GENRES if g not in ONLY_BESIDE]
    rows = []
    for index in range(per_genre * len(leads)):
        lead = leads[index % len(leads)]
        genres = [lead, *rng.choice([g for g in leads if g != lead], rng.integers(0, 3), replace=False)]
        for rare, partner in ONLY_BESIDE.items():
            if lead == partner and index % 2 == 0:
                genres.append(rare)
        tint = np.array([KAGGLE_GENRES.index(lead) * 9 % 256, 80, 160], dtype=np.int16)
        pixels = np.clip(rng.integers(-60, 60, (60, 40, 3)) + tint, 0, 255).astype(np.uint8)
        name = f"poster_{index:04d}.jpg"
        Image.fromarray(pixels).save(folder / name, quality=90)
        rows.append(f"{name},{'|'.join(rng.permutation(genres))}")
    csv = folder / "labels.csv"
    csv.write_text("file_path,labels\n" + "\n".join(rows) + "\n")
    return csv


def test_a_28_genre_multilabel_csv_trains_with_the_probe_and_balanced_sampling(tmp_path: Path):
    data = tmp_path / "posters"
    data.mkdir()
    csv = kaggle_csv(data)
    run = tmp_path / "run"
    classes = "[" + ",".join(KAGGLE_GENRES) + "]"
    with open(tmp_path / "stdout.log", "w") as stdout:
        done = run_cli(
            "genre-train", "experiment=probe_cpu", *FAST, f"data.annotations={csv}", "data.task=multilabel",
            f"data.classes={classes}", "data.balanced_sampling=true", f"hydra.run.dir={run}",
            cwd=tmp_path, stdout=stdout,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads((run / "data_report.json").read_text())
    for rare in ONLY_BESIDE:  # never a poster's first genre in the CSV order, still a genre of the split
        assert report["per_class"][rare]["with_genre"] > 0
    split = read_csv(run / "annotations.csv")
    assert {g for labels in split["labels"] for g in labels.split("|")} == set(KAGGLE_GENRES)

    probe = json.loads((run / "probe.json").read_text())
    assert probe["train_images"] == (split["split"] == "train").sum()
    assert probe["chosen_C"] == min(probe["grid"], key=lambda s: (s["val_log_loss"], -s["C"]))["C"]
    metrics = json.loads((run / "metrics.json").read_text())
    # The validation epoch after the step at LR 0 scores the fitted one-vs-rest head as the probe did.
    assert metrics["final_val"]["val/acc"] == pytest.approx(probe["val_acc"], abs=1e-6)
    assert {f"test/ap/{g}" for g in KAGGLE_GENRES} <= set(metrics["test"])

    for name in ("cooccurrence", "precision_recall", "genre_distribution", "train_samples"):
        with Image.open(run / "figures" / f"{name}.png") as image:
            assert max(image.size) <= 3000, (name, image.size)
