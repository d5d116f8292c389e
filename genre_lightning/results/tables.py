"""What a set of predictions says: the probability table, confusion matrix, calibration bins,
the most confident mistakes, and the per-class table printed after a test. No plotting here
(that is ``figures.py``) and no Lightning (that is ``callback.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from rich.table import Table
from torchmetrics.functional.classification import multiclass_confusion_matrix

from genre_lightning.inference.prediction_table import genre_sets, probability_frame


@dataclass
class Predictions:
    """Per-image test results, in dataset order: ``probs`` (N, C), ``targets`` (N,) or, multi-label,
    multi-hot (N, C) with the model's decision ``thresholds`` (C,) and its ``decisions`` (the predicted
    genres, a boolean (N, C) from its task), and ``paths``."""

    probs: torch.Tensor
    targets: torch.Tensor
    paths: list[str]
    classes: list[str]
    thresholds: torch.Tensor | None = None
    decisions: torch.Tensor | None = None

    @property
    def multilabel(self) -> bool:
        return self.targets.ndim == 2

    @property
    def preds(self) -> torch.Tensor:
        return self.probs.argmax(dim=1)

    @property
    def predicted_sets(self) -> torch.Tensor:
        """Multi-label: a boolean (N, C) of the genres above their thresholds."""
        return self.decisions

    @property
    def top1_correct(self) -> torch.Tensor:
        """Whether the top genre is a true one (multi-label: any of the image's genres)."""
        if self.multilabel:
            return self.targets.gather(1, self.preds[:, None]).squeeze(1).bool()
        return self.preds == self.targets

    def frame(self) -> pd.DataFrame:
        """The probability table with the true ``label`` and ``correct`` added (test_predictions.csv).

        Multi-label: ``labels`` (true genres), ``predicted`` (genres above their thresholds), ``correct``
        (the top genre is a true one) and ``exact`` (predicted == labels)."""
        if not self.multilabel:
            frame = probability_frame(self.paths, self.probs, self.classes)
            frame.insert(1, "label", [self.classes[t] for t in self.targets.tolist()])
            frame["correct"] = frame["label"] == frame["top1"]
            return frame
        frame = probability_frame(self.paths, self.probs, self.classes, decisions=self.decisions)
        frame.insert(1, "labels", genre_sets(self.targets.bool(), self.classes))
        frame["correct"] = self.top1_correct.numpy()
        frame["exact"] = frame["labels"] == frame["predicted"]
        return frame

    def cooccurrence_matrix(self) -> np.ndarray:
        """Multi-label: images with true genre i (row) for which genre j (column) was predicted."""
        return (self.targets.long().T @ self.predicted_sets.long()).numpy()

    def confusion_matrix(self) -> np.ndarray:
        """Counts, rows = true genre, columns = predicted genre (torchmetrics)."""
        matrix = multiclass_confusion_matrix(self.preds, self.targets, num_classes=len(self.classes))
        return matrix.numpy()

    def most_confident_mistakes(self, limit: int) -> pd.DataFrame:
        """Up to ``limit`` misclassified images, the most confident (highest ``p_top1``) first."""
        frame = self.frame()
        wrong = frame[~frame["correct"]]
        return wrong.sort_values("p_top1", ascending=False, kind="stable").head(limit)


def calibration_bins(probs: torch.Tensor, targets: torch.Tensor, n_bins: int) -> pd.DataFrame:
    """Top-1 confidence binned on ``[0, 1]`` in ``n_bins`` equal bins, ``lower <= p < upper`` as in
    torchmetrics: count, mean confidence and accuracy per bin (the reliability diagram).

    ``sum(count * |accuracy - confidence|) / N`` over these bins is torchmetrics' ECE, except that
    torchmetrics keeps a confidence of exactly 1.0 in a bin of its own, where we count it in the last bin.
    """
    confidence, predicted = probs.float().max(dim=1)
    correct = (predicted == targets).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(max=n_bins - 1)
    count = torch.zeros(n_bins).scatter_add_(0, index, torch.ones_like(confidence))
    conf_sum = torch.zeros(n_bins).scatter_add_(0, index, confidence)
    acc_sum = torch.zeros(n_bins).scatter_add_(0, index, correct)
    nonzero = count.clamp(min=1)
    return pd.DataFrame(
        {
            "lower": edges[:-1].numpy(),
            "upper": edges[1:].numpy(),
            "count": count.numpy().astype(int),
            "confidence": (conf_sum / nonzero).numpy(),
            "accuracy": (acc_sum / nonzero).numpy(),
        }
    )


def per_class_table(
    metrics: Mapping[str, float], classes: Sequence[str], support: Sequence[int], prefix: str = "test/"
) -> Table:
    """Precision, recall, F1 and support per genre, the macro averages, then accuracy, top-2 and ECE."""
    table = Table(title=f"{prefix.rstrip('/')} results ({sum(support)} images)", title_justify="left")
    for column in ("genre", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "genre" else "right")

    def value(key: str) -> str:
        number = metrics.get(prefix + key)
        return "-" if number is None else f"{number:.3f}"

    for name, count in zip(classes, support, strict=True):
        table.add_row(name, value(f"precision/{name}"), value(f"recall/{name}"), value(f"f1/{name}"), str(count))
    table.add_section()
    table.add_row(
        "macro avg", value("precision_macro"), value("recall_macro"), value("f1_macro"), str(sum(support)), style="bold"
    )
    table.caption = f"accuracy {value('acc')}   top-2 accuracy {value('acc_top2')}   ECE {value('ece')}"
    table.caption_justify = "left"
    return table


def multilabel_table(
    metrics: Mapping[str, float],
    classes: Sequence[str],
    support: Sequence[int],
    thresholds: Sequence[float],
    prefix: str = "test/",
) -> Table:
    """Multi-label: AP, precision, recall and F1 at each genre's threshold, then mAP, micro/macro F1,
    subset accuracy, Hamming loss and top-1 "any true genre" accuracy."""
    table = Table(title=f"{prefix.rstrip('/')} multi-label results", title_justify="left")
    for column in ("genre", "AP", "threshold", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "genre" else "right")

    def value(key: str) -> str:
        number = metrics.get(prefix + key)
        return "-" if number is None else f"{number:.3f}"

    for name, count, threshold in zip(classes, support, thresholds, strict=True):
        table.add_row(
            name,
            value(f"ap/{name}"),
            f"{threshold:.3f}",
            value(f"precision/{name}"),
            value(f"recall/{name}"),
            value(f"f1/{name}"),
            str(count),
        )
    table.add_section()
    table.add_row("macro avg", value("map"), "", "", "", value("f1_macro"), "", style="bold")
    table.caption = (
        f"mAP {value('map')}   micro-F1 {value('f1_micro')}   subset accuracy {value('subset_acc')}   "
        f"Hamming loss {value('hamming')}   top-1 any-true accuracy {value('acc')}"
    )
    table.caption_justify = "left"
    return table
