"""Temperature scaling: the fit itself, and a deliberately over-confident model calibrated by a real
validation loop, then tested (ECE before and after), predicted and exported with its temperature."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import log_softmax

from genre_lightning.data.datamodule import PosterDataModule
from genre_lightning.inference.predictor import Predictor
from genre_lightning.training.calibration import fit_temperature, uncalibrated
from genre_lightning.training.module import GenreClassifier

CLASSES = ["Action", "Comedy", "Horror", "Romance"]


def nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    return float(-log_softmax(logits / t, axis=1)[np.arange(len(labels)), labels].mean())


def test_the_fit_recovers_the_temperature_that_drew_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(4000, 4))
    truth = 2.5
    p = np.exp(logits / truth) / np.exp(logits / truth).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in p])
    fitted = fit_temperature(torch.from_numpy(logits), torch.from_numpy(labels))
    assert fitted == pytest.approx(truth, rel=0.08)
    grid = np.exp(np.linspace(np.log(0.5), np.log(10), 2001))  # a brute-force minimum of the same likelihood
    assert fitted == pytest.approx(grid[np.argmin([nll(logits, labels, t) for t in grid])], rel=2e-3)


def test_a_perfectly_separated_split_has_no_temperature():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [4.0, -1.0]])
    assert fit_temperature(logits, torch.tensor([0, 1, 0])) is None


def best_checkpoint(run: Path) -> str:
    return json.loads((run / "metrics.json").read_text())["best_ckpt_path"]


@pytest.mark.slow
def test_temperature_scaling_lowers_the_ece_of_an_over_confident_model(tiny_run: Path, tmp_path: Path):
    model = GenreClassifier.from_checkpoint(best_checkpoint(tiny_run))
    # Logits 20x larger than the run's calibrated ones (its own T says how far from calibrated they
    # are): the same answers, far too sure of them.
    scale = 20.0 / float(model.task.temperature)
    with torch.no_grad():
        model.net.get_classifier().weight.mul_(scale)
        model.net.get_classifier().bias.mul_(scale)
        model.task.temperature.fill_(1.0)
    datamodule = PosterDataModule(
        CLASSES, str(tmp_path / "eval"), split_file=str(tiny_run / "annotations.csv"), batch_size=16
    )
    datamodule.set_data_config(model.data_config)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.validate(model, datamodule=datamodule, verbose=False)
    fitted = float(model.task.temperature)

    # The same fit, recomputed from the validation logits of a plain forward pass.
    val = datamodule.datasets["val"]
    images = torch.stack([val[i]["image"] for i in range(len(val))])
    targets = torch.tensor([val[i]["target"] for i in range(len(val))])
    with torch.no_grad():
        logits = model.eval()(images)
    assert fitted > 5  # the model was over-confident: it is cooled down
    assert fitted == pytest.approx(fit_temperature(logits, targets), rel=1e-4)

    (metrics,) = trainer.test(model, datamodule=datamodule, verbose=False)
    assert metrics["test/ece"] < metrics["test/ece_uncalibrated"] - 0.05

    # The predictor of this model gives softmax(logits / T), and undoing T gives softmax(logits) back.
    predictor = Predictor.from_module(model)
    probabilities = predictor.probabilities(images[:8])
    expected = (predictor.logits(images[:8]) / fitted).softmax(dim=1)
    torch.testing.assert_close(probabilities, expected)
    torch.testing.assert_close(uncalibrated(probabilities, fitted), predictor.logits(images[:8]).softmax(dim=1))


@pytest.mark.slow
def test_the_checkpoint_carries_its_temperature_to_the_predictor_and_the_run_reports_both_eces(tiny_run: Path):
    checkpoint = torch.load(best_checkpoint(tiny_run), map_location="cpu", weights_only=True)
    temperature = float(checkpoint["state_dict"]["task.temperature"])
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["temperature"] == pytest.approx(temperature) and temperature != 1.0
    assert {"test/ece", "test/ece_uncalibrated"} <= set(metrics["test"])
    predictor = Predictor.from_checkpoint(best_checkpoint(tiny_run))
    tested = pd.read_csv(tiny_run / "test_predictions.csv")
    results = predictor.predict(list(tested["file_path"]), top_k=1)
    got = np.array([[r.probabilities[c] for c in CLASSES] for r in results])
    np.testing.assert_allclose(got, tested[[f"p_{c}" for c in CLASSES]].to_numpy(), atol=1e-5)


@pytest.mark.slow
def test_a_checkpoint_without_a_temperature_loads_with_none(tiny_run: Path, tmp_path: Path):
    saved = torch.load(best_checkpoint(tiny_run), map_location="cpu", weights_only=True)
    del saved["state_dict"]["task.temperature"]  # as written before temperature scaling existed
    saved["hyper_parameters"].pop("temperature", None)
    old = tmp_path / "old.ckpt"
    torch.save(saved, old)
    predictor = Predictor.from_checkpoint(old)
    assert float(predictor.task.temperature) == 1.0
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(predictor.probabilities(images), predictor.logits(images).softmax(dim=1))
