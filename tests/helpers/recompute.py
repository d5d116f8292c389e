"""A run's test metrics recomputed from its per-image table (``test_predictions.csv``: the
probabilities) and its split file (``annotations.csv``: the true genres), with numpy and
scikit-learn instead of the run's torchmetrics: what a test compares ``metrics.json`` with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, f1_score

from genre_lightning.utils.csvio import read_csv


def _probabilities(predictions: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    classes = [c.removeprefix("p_") for c in predictions.columns if c.startswith("p_") and c != "p_top1"]
    # float32 as the run wrote them, then exact float64: ties with float32 thresholds stay ties
    return classes, predictions[[f"p_{c}" for c in classes]].to_numpy(dtype=np.float32).astype(np.float64)


def _test_rows(run: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The predictions and, row for row, the split file's test rows (every test image exactly once)."""
    predictions = read_csv(run / "test_predictions.csv")
    split = read_csv(run / "annotations.csv")
    test = split[split["split"] == "test"].set_index("file_path")
    assert sorted(predictions["file_path"]) == sorted(test.index), "the predictions are not the test split"
    return predictions, test.loc[list(predictions["file_path"])]


def single_label_metrics(run: Path) -> dict[str, float]:
    """``test/acc`` (top-1 against the split's label) and ``test/loss`` (mean cross-entropy) of a
    single-label run without label smoothing.

    The table's probabilities are calibrated, softmax(z / T), while ``test/loss`` is the loss of the
    logits z: with T from ``metrics.json`` (the tested checkpoint's), softmax(T * log p) = softmax(z)."""
    predictions, truth = _test_rows(run)
    classes, probabilities = _probabilities(predictions)
    labels = np.array([classes.index(label) for label in truth["label"]])
    temperature = json.loads((run / "metrics.json").read_text()).get("temperature", 1.0)
    scaled = temperature * np.log(probabilities)
    log_softmax = scaled - np.logaddexp.reduce(scaled, axis=1, keepdims=True)
    return {
        "test/acc": float((probabilities.argmax(axis=1) == labels).mean()),
        "test/loss": float(-log_softmax[np.arange(len(labels)), labels].mean()),
    }


def multilabel_metrics(run: Path, thresholds: np.ndarray) -> dict[str, float]:
    """A multi-label run's test metrics: the genres above ``thresholds`` (the checkpoint's) against
    the split's genre sets, and the average precision of each genre's probabilities."""
    predictions, truth = _test_rows(run)
    classes, probabilities = _probabilities(predictions)
    true = np.array([[c in labels.split("|") for c in classes] for labels in truth["labels"]])
    chosen = probabilities > np.asarray(thresholds, dtype=np.float64)
    metrics = {
        "test/acc": float(true[np.arange(len(true)), probabilities.argmax(axis=1)].mean()),  # top-1 is a true genre
        "test/f1_micro": float(f1_score(true, chosen, average="micro", zero_division=0)),
        "test/f1_macro": float(f1_score(true, chosen, average="macro", zero_division=0)),
        "test/subset_acc": float((chosen == true).all(axis=1).mean()),
        "test/hamming": float((chosen != true).mean()),
    }
    precisions = [average_precision_score(true[:, i], probabilities[:, i]) for i in range(len(classes))]
    metrics |= {f"test/ap/{c}": float(ap) for c, ap in zip(classes, precisions, strict=True)}
    metrics["test/map"] = float(np.mean(precisions))
    return metrics
