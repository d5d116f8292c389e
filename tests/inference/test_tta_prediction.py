"""Test-time views at prediction: a checkpoint from before model.tta (tta_hflip only) loads and predicts
what it always did; genre-predict's and genre-eval's ``tta`` override a checkpoint's views; a bad value
is a one-line error; the model card says which views the model averages; the throughput bench runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from genre_lightning.inference.model_card import model_card
from genre_lightning.inference.predictor import Predictor
from genre_lightning.models.tta import TTA, resolve_tta, tta_views
from genre_lightning.training.module import GenreClassifier
from tests.helpers.cli import run_entry_point
from tests.helpers.paths import REPO

pytestmark = pytest.mark.slow  # the tiny_run fixture (a training run)

PROBABILITIES = [f"p_{c}" for c in ("Action", "Comedy", "Horror", "Romance")]
VIEWS = "tta={scales: [1.0, 1.2], crops: five}"


@pytest.fixture(scope="module")
def old_flip_checkpoint(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run's checkpoint as an older release wrote it with tta_hflip=true: no ``tta`` key."""
    source = Path(json.loads((tiny_run / "metrics.json").read_text())["best_ckpt_path"])
    saved = torch.load(source, map_location="cpu", weights_only=True)
    saved["hyper_parameters"].pop("tta", None)
    saved["hyper_parameters"]["tta_hflip"] = True
    run = tmp_path_factory.mktemp("old") / "run"  # the run folder (metrics, split) without its checkpoints
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.ckpt"))
    target = run / "checkpoints" / "old.ckpt"
    target.parent.mkdir(exist_ok=True)
    torch.save(saved, target)
    return target


@pytest.fixture(scope="module")
def posters(poster_root: Path) -> list[str]:
    return sorted(str(p) for p in poster_root.rglob("*.jpg"))[:24]


def expected_probabilities(checkpoint: Path, posters: list[str], views: TTA) -> np.ndarray:
    """Each poster's calibrated probabilities from the mean of its views' logits, computed here."""
    model = GenreClassifier.from_checkpoint(checkpoint).eval()
    transform = Predictor.from_checkpoint(checkpoint, backend="torch").eval_transform
    from PIL import Image

    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in posters])
    with torch.no_grad():
        logits = sum(model.net(view) for view in tta_views(batch, views)) / views.views
        return model.task.probabilities(logits).numpy()


def test_an_old_flip_checkpoint_loads_and_predicts_its_flip_average(old_flip_checkpoint: Path, posters: list[str]):
    predictor = Predictor.from_checkpoint(old_flip_checkpoint, backend="torch")
    assert predictor.tta == TTA(hflip=True) and predictor.tta_hflip
    model = GenreClassifier.from_checkpoint(old_flip_checkpoint)
    assert model.test_time_augmentation() == TTA(hflip=True) and model.hparams.get("tta") is None
    predicted = predictor.predict_files(posters, progress=False)[PROBABILITIES].to_numpy()
    expected = expected_probabilities(old_flip_checkpoint, posters, TTA(hflip=True))
    np.testing.assert_allclose(predicted, expected, atol=1e-5)


def test_genre_predict_tta_overrides_the_checkpoints_views(old_flip_checkpoint: Path, posters: list, tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for path in posters:
        shutil.copy(path, inbox / Path(path).name)
    args = ["genre-predict", f"ckpt_path={old_flip_checkpoint}", f"input={inbox}", "backend=torch"]
    done = run_entry_point(*args, "output_csv=views.csv", VIEWS, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    flip = run_entry_point(*args, "output_csv=flip.csv", cwd=tmp_path)
    assert flip.returncode == 0, flip.stderr[-2000:]
    views, flipped = (pd.read_csv(tmp_path / name).sort_values("file_path") for name in ("views.csv", "flip.csv"))
    order = sorted(str(inbox / Path(p).name) for p in posters)
    assert list(views["file_path"]) == order
    # tta's hflip defaults to the checkpoint's (true): scales [1, 1.2] and five crops, each mirrored: 14 views.
    wanted = resolve_tta({"hflip": True, "scales": [1.0, 1.2], "crops": "five"})
    expected = expected_probabilities(old_flip_checkpoint, order, wanted)
    np.testing.assert_allclose(views[PROBABILITIES].to_numpy(), expected, atol=1e-5)
    assert np.abs(views[PROBABILITIES].to_numpy() - flipped[PROBABILITIES].to_numpy()).max() > 1e-3


@pytest.mark.parametrize(
    "command, override, message",
    [
        ("genre-predict", "tta={crops: ten}", "error: tta.crops='ten' is not valid: expected one of ['none', 'center'"),
        ("genre-predict", "tta={scales: [0.1]}", "error: tta.scales=[0.1] is not valid: expected a non-empty list"),
        ("genre-eval", "tta={zoom: 2}", "error: tta.zoom=2 is not valid: expected only the keys ['hflip', 'scales'"),
    ],
)
def test_a_bad_tta_value_is_a_one_line_error(old_flip_checkpoint: Path, tmp_path: Path, command, override, message):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"")  # the value is refused before any image is read
    args = [f"input={image}"] if command == "genre-predict" else [f"hydra.run.dir={tmp_path / 'eval'}"]
    done = run_entry_point(command, f"ckpt_path={old_flip_checkpoint}", *args, override, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(message), done.stderr[-1000:]


def test_a_bad_model_tta_stops_genre_train_in_one_line(poster_root: Path, tmp_path: Path):
    done = run_entry_point(
        "genre-train", f"data.root={poster_root}", "model.tta={crops: 5}", f"hydra.run.dir={tmp_path}", cwd=tmp_path
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: model.tta.crops=5 is not valid: expected one of ['none', 'center', 'five']"
    )


def test_the_model_card_names_the_views(old_flip_checkpoint: Path, tmp_path: Path):
    assert "Test-time augmentation: flip (the image and its mirror)." in model_card(old_flip_checkpoint)
    saved = torch.load(old_flip_checkpoint, map_location="cpu", weights_only=True)
    saved["hyper_parameters"]["tta"] = {"scales": [1.0, 1.2]}
    richer = old_flip_checkpoint.with_name("richer.ckpt")
    torch.save(saved, richer)
    card = model_card(richer)
    assert "Test-time augmentation: scales [1.0, 1.2], each with its mirror: 4 views averaged." in card


def test_the_throughput_benchmark_prints_a_row_per_setting(old_flip_checkpoint: Path, poster_root: Path):
    done = subprocess.run(
        [sys.executable, "bench/tta_throughput.py", f"--checkpoint={old_flip_checkpoint}", f"--posters={poster_root}"]
        + ["--images=16", "--rounds=1", "--backend=torch"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = re.findall(r"^\| (.+?) \| (\d+) \| torch \| ([0-9.]+) \|$", done.stdout, re.MULTILINE)
    assert [int(views) for _, views, _ in rows] == [1, 2, 4, 4, 6, 12]
    assert all(float(speed) > 0 for _, _, speed in rows)
