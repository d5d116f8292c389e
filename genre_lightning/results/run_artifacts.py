"""TestArtifacts: after ``trainer.test`` (genre-train and genre-eval), write what a person reads.

The model's ``test_step`` returns each image's probabilities, target and dataset index; this
callback collects them on every rank, gathers them on global rank 0 (DDP shards the test set
without repeats), and writes into the run folder:

* ``test_predictions.csv``: one row per test image (file, true label, top-1, probabilities);
* ``confusion_matrix.csv``: counts, rows = true genre, columns = predicted genre;
* ``figures/``: confusion matrix, most confident mistakes, training samples after the
  transforms, predicted-vs-true distribution, reliability diagram (also TensorBoard images);
  with ``cam=True`` also ``mistakes_cam.png``: the mistakes with the class-activation map of the
  genre the model predicted (``inference/explain.py``; a backward pass per poster shown);
* a per-class table on the console.

A multi-label model (``data.task=multilabel``) gets its own tables and figures instead of the
confusion matrix and reliability diagram: ``test_predictions.csv`` with the true ``labels`` and the
``predicted`` genres (above each genre's threshold), ``cooccurrence.csv`` and its figure (rows: true
genre, columns: predicted genre, over images that carry the row's genre), per-genre
precision-recall curves with the thresholds marked, the mistakes grid (top genre not a true one)
and the predicted-vs-true genre counts.

The metrics themselves (per-class, macro, top-2, ECE) are torchmetrics in the model and land in
``metrics.json`` through ``trainer.test``; the table prints those same numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rich
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import precision_recall_curve

from genre_lightning.results import figures
from genre_lightning.results.poster_grids import (
    ShownMistake,
    mistakes_cam_figure,
    mistakes_figure,
    train_samples_figure,
)
from genre_lightning.results.tables import Predictions, calibration_bins, multilabel_table, per_class_table
from genre_lightning.training.calibration import uncalibrated
from genre_lightning.training.metrics import ECE_BINS
from genre_lightning.utils.csvio import write_csv
from genre_lightning.utils.distributed import all_gather_objects
from genre_lightning.utils.plain_values import to_python

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "test_predictions.csv"
CONFUSION_FILE = "confusion_matrix.csv"
COOCCURRENCE_FILE = "cooccurrence.csv"
FIGURES_DIR = "figures"


class TestArtifacts(Callback):
    """Collect per-image test predictions and write tables and figures into ``output_dir``.

    Args:
        output_dir: the run folder.
        max_mistakes: how many misclassified posters the mistakes grid shows (most confident first).
        samples_per_class: training samples per genre in the training-samples grid.
        columns: images per row in the mistakes grid.
        print_table: print the per-class table on the console.
        cam: also draw the mistakes with their class-activation maps (``figures/mistakes_cam.png``).
        cam_method: ``gradcam``, ``gradcam++`` or ``scorecam``.
    """

    def __init__(
        self,
        output_dir: str | Path,
        max_mistakes: int = 24,
        samples_per_class: int = 4,
        columns: int = 6,
        print_table: bool = True,
        cam: bool = False,
        cam_method: str = "gradcam",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.cam, self.cam_method = cam, cam_method
        self.max_mistakes = max_mistakes
        self.samples_per_class = samples_per_class
        self.columns = columns
        self.print_table = print_table
        self._parts: dict[str, list[torch.Tensor]] = {}
        self.written: dict[str, Path] = {}
        self.mistakes_shown: list[ShownMistake] = []

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._parts = {"probs": [], "target": [], "index": []}

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, dict) or "probs" not in outputs:
            return  # a batch whose images all failed to decode
        for key in self._parts:
            self._parts[key].append(outputs[key].detach().float().cpu() if key == "probs" else outputs[key].cpu())

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        predictions = self._gather(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        if predictions is None or not len(predictions.targets):
            log.warning("No test predictions were collected: no tables or figures written")
            return
        self.written = self._write(trainer, pl_module, predictions)
        log.info("Test artifacts: %s", ", ".join(str(p.relative_to(self.output_dir)) for p in self.written.values()))

    def _gather(self, trainer: Trainer, pl_module: LightningModule) -> Predictions | None:
        """Every rank's predictions on global rank 0, in dataset order (None on the other ranks)."""
        classes = list(pl_module.classes)
        multilabel = pl_module.task.multilabel
        empty_shapes = {"probs": (0, len(classes)), "target": (0, len(classes)) if multilabel else (0,), "index": (0,)}
        local = {
            key: torch.cat(parts) if parts else torch.empty(empty_shapes[key]) for key, parts in self._parts.items()
        }
        # Every rank, also one whose images all failed (it sends empty tensors); uneven sizes are fine.
        parts = all_gather_objects(local)
        if not trainer.is_global_zero:
            return None
        index = torch.cat([p["index"] for p in parts]).long()
        probs = torch.cat([p["probs"] for p in parts])
        target = torch.cat([p["target"] for p in parts]).long()
        # Dataset order; an index seen twice (a sampler that pads shards) counts once.
        unique, first = np.unique(index.numpy(), return_index=True)
        order = torch.from_numpy(first)
        dataset = _test_dataset(trainer)
        paths = [dataset.paths[i] for i in unique.tolist()] if dataset is not None else [str(i) for i in unique]
        probs = probs[order]
        thresholds = pl_module.task.thresholds()
        if thresholds is None:
            return Predictions(probs, target[order], paths, classes)
        decisions = pl_module.task.decisions(probs.to(thresholds.device)).cpu()
        return Predictions(probs, target[order], paths, classes, thresholds.detach().cpu(), decisions)

    def _write(self, trainer: Trainer, pl_module: LightningModule, predictions: Predictions) -> dict[str, Path]:
        out = self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        written: dict[str, Path] = {}
        split = getattr(trainer.datamodule, "test_split", "test")

        write_csv(predictions.frame(), out / PREDICTIONS_FILE)  # keeps non-UTF-8 file names byte-exact
        written["predictions"] = out / PREDICTIONS_FILE
        metrics = to_python({k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
        if predictions.multilabel:
            figures_to_write = self._multilabel_outputs(predictions, metrics, split, written)
        else:
            temperature = getattr(pl_module.task, "temperature", None)
            figures_to_write = self._single_label_outputs(predictions, metrics, split, written, temperature)
        figures_to_write["mistakes"] = ("test/mistakes", self._mistakes_figure(predictions, split))
        if self.cam:
            figures_to_write["mistakes_cam"] = ("test/mistakes_cam", self._mistakes_cam_figure(pl_module, split))
        samples = self._train_samples_figure(trainer, pl_module)
        if samples is not None:
            figures_to_write["train_samples"] = ("train/samples", samples)
        tensorboards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        for name, (tag, figure) in figures_to_write.items():
            written[name] = figures.save_png(figure, out / FIGURES_DIR / f"{name}.png")
            if tensorboards:  # the PNG just written, not a second rendering (add_figure draws it again)
                pixels = np.asarray(Image.open(written[name]).convert("RGB"))
                for logger in tensorboards:
                    logger.experiment.add_image(tag, pixels, global_step=trainer.global_step, dataformats="HWC")
        for logger in tensorboards:
            logger.experiment.flush()
        return written

    def _single_label_outputs(
        self,
        predictions: Predictions,
        metrics: dict[str, float],
        split: str,
        written: dict[str, Path],
        temperature: torch.Tensor | None = None,
    ) -> dict[str, tuple[str, Figure]]:
        """confusion_matrix.csv and the per-class table; the figures to write (name: (tag, figure))."""
        out, classes = self.output_dir, predictions.classes
        matrix = predictions.confusion_matrix()
        confusion = pd.DataFrame(matrix, index=pd.Index(classes, name="true\\predicted"), columns=classes)
        confusion.to_csv(out / CONFUSION_FILE)
        written["confusion_csv"] = out / CONFUSION_FILE
        support = matrix.sum(axis=1).tolist()
        if self.print_table:
            rich.print(per_class_table(metrics, classes, support))

        return {
            "confusion_matrix": (
                "test/confusion_matrix",
                figures.confusion_matrix_figure(matrix, classes, f"Confusion matrix, {split} split"),
            ),
            "genre_distribution": (
                "test/genre_distribution",
                figures.distribution_figure(support, matrix.sum(axis=0).tolist(), classes),
            ),
            "reliability": ("test/reliability", self._reliability_figure(predictions, metrics, temperature)),
        }

    @staticmethod
    def _reliability_figure(
        predictions: Predictions, metrics: dict[str, float], temperature: torch.Tensor | None
    ) -> Figure:
        """Calibration after temperature scaling, and before it (where the model has a temperature)."""
        after = calibration_bins(predictions.probs, predictions.targets, ECE_BINS)
        t = float(temperature) if temperature is not None else 1.0
        if t == 1.0:
            return figures.reliability_figure(after, metrics.get("test/ece"))
        before = calibration_bins(uncalibrated(predictions.probs, t), predictions.targets, ECE_BINS)
        return figures.reliability_figure(
            after, metrics.get("test/ece"), before, metrics.get("test/ece_uncalibrated"), t
        )

    def _multilabel_outputs(
        self, predictions: Predictions, metrics: dict[str, float], split: str, written: dict[str, Path]
    ) -> dict[str, tuple[str, Figure]]:
        """cooccurrence.csv and the multi-label table; the figures to write (name: (tag, figure))."""
        out, classes = self.output_dir, predictions.classes
        matrix = predictions.cooccurrence_matrix()
        support = predictions.targets.long().sum(dim=0).numpy()
        frame = pd.DataFrame(matrix, index=pd.Index(classes, name="true\\predicted"), columns=classes)
        frame["images"] = support  # how many images carry the row's genre (what a row is divided by)
        frame.to_csv(out / COOCCURRENCE_FILE)
        written["cooccurrence_csv"] = out / COOCCURRENCE_FILE
        thresholds = predictions.thresholds.tolist()
        if self.print_table:
            rich.print(multilabel_table(metrics, classes, support.tolist(), thresholds))
        curves, ap, points = [], [], []
        for genre, name in enumerate(classes):
            truth, scores = predictions.targets[:, genre].numpy(), predictions.probs[:, genre].numpy()
            precision, recall, _ = precision_recall_curve(truth, scores) if truth.any() else ([1.0], [0.0], None)
            curves.append((np.asarray(precision), np.asarray(recall)))
            ap.append(float(metrics.get(f"test/ap/{name}", float("nan"))))
            # The model's own test metrics at this threshold: where the threshold sits on the curve.
            operating = (
                metrics.get(f"test/recall/{name}", float("nan")),
                metrics.get(f"test/precision/{name}", float("nan")),
            )
            points.append((*operating, thresholds[genre]))
        return {
            "cooccurrence": (
                "test/cooccurrence",
                figures.confusion_matrix_figure(
                    matrix, classes, f"Genre co-occurrence, truth vs prediction, {split} split", row_totals=support
                ),
            ),
            "precision_recall": (
                "test/precision_recall",
                figures.precision_recall_figure(
                    curves, ap, points, classes, f"Precision-recall per genre, {split} split"
                ),
            ),
            "genre_distribution": (
                "test/genre_distribution",
                figures.distribution_figure(support.tolist(), predictions.predicted_sets.sum(dim=0).tolist(), classes),
            ),
        }

    def _mistakes_figure(self, predictions: Predictions, split: str) -> Figure:
        figure, self.mistakes_shown = mistakes_figure(predictions, split, self.max_mistakes, self.columns)
        return figure

    def _mistakes_cam_figure(self, pl_module: LightningModule, split: str) -> Figure:
        return mistakes_cam_figure(pl_module, self.mistakes_shown, self.cam_method, split, self.columns)

    def _train_samples_figure(self, trainer: Trainer, pl_module: LightningModule) -> Figure | None:
        datasets = getattr(trainer.datamodule, "datasets", {}) or {}
        dataset = datasets.get("train")
        if dataset is None or len(dataset) == 0 or self.samples_per_class < 1:
            return None
        return train_samples_figure(dataset, list(pl_module.classes), pl_module.data_config, self.samples_per_class)


def _test_dataset(trainer: Trainer) -> Any:
    loaders = trainer.test_dataloaders
    loader = loaders[0] if isinstance(loaders, Sequence) else loaders
    dataset = getattr(loader, "dataset", None)
    return dataset if hasattr(dataset, "paths") else None
