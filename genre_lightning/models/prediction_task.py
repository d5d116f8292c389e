"""What a model's logits mean at prediction time: the prediction half of the two task objects.

"One genre per poster" (``single``) and "any number of genres per poster" (``multilabel``) turn
logits into probabilities and decisions differently, with state tuned on the validation split and
saved in the checkpoint (the single-label temperature, the multi-label decision thresholds). These
classes hold that state and those rules, with nothing of training: the predictor, the exports and
genre-serve build them from a checkpoint. The training half (loss, metrics, Mixup, the tuning
itself) subclasses them in ``training/tasks.py``, so training, evaluation, prediction and export
decide alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from genre_lightning.utils.errors import ConfigError

TASKS = ("single", "multilabel")
DEFAULT_THRESHOLD = 0.5  # a multi-label genre's threshold before the first validation epoch has tuned it


class PredictionTask(nn.Module):
    """Probabilities and decisions for one kind of labels. Its buffers are saved in the checkpoint."""

    multilabel = False

    def __init__(self, classes: Sequence[str]) -> None:
        super().__init__()
        self.classes = list(classes)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decisions(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The predicted genres: a boolean (N, C)."""
        raise NotImplementedError

    def thresholds(self) -> torch.Tensor | None:
        """Each genre's decision threshold (multi-label), or None (single-label: the top genre)."""
        return None

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        """This object's state from a checkpoint's task state (``task.`` stripped); what only training
        keeps there (e.g. the multi-label positive weights) is not needed to predict and is left out."""
        own = set(self.state_dict())
        self.load_state_dict({name: value for name, value in state.items() if name in own})


class SingleLabelPrediction(PredictionTask):
    """One genre per poster: ``softmax(logits / T)`` (temperature scaling, ``training/calibration.py``)
    and the top genre. ``T`` is a buffer, so checkpoints, the predictor and exports carry it; a
    ``temperature`` of None starts it at 1.0 (training fits it on the validation split)."""

    def __init__(self, classes: Sequence[str], temperature: float | None = None) -> None:
        super().__init__(classes)
        if temperature is not None and (isinstance(temperature, bool) or not float(temperature) > 0):
            raise ConfigError(
                "model.temperature", temperature, "null (fitted on the validation split) or a positive number"
            )
        self.register_buffer("temperature", torch.tensor(1.0 if temperature is None else float(temperature)))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits / self.temperature.to(logits)).softmax(dim=-1)

    def decisions(self, probabilities: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(probabilities.argmax(dim=-1), len(self.classes)).bool()


class MultiLabelPrediction(PredictionTask):
    """Any number of genres: a sigmoid per genre, and every genre above its decision threshold (tuned
    per genre on the validation split, or one ``threshold`` for every genre)."""

    multilabel = True

    def __init__(self, classes: Sequence[str], threshold: float | None = None) -> None:
        super().__init__(classes)
        check_threshold(threshold)
        self.threshold = threshold
        # A buffer, so a checkpoint (and the export sidecar) carries the tuned thresholds.
        self.register_buffer("tuned_thresholds", torch.full((len(self.classes),), DEFAULT_THRESHOLD))

    def set_threshold(self, threshold: float | None) -> None:
        """Decide every genre at ``threshold`` instead of the tuned thresholds (None: the tuned ones)."""
        check_threshold(threshold, key="threshold")
        self.threshold = threshold

    def thresholds(self) -> torch.Tensor:
        if self.threshold is not None:
            return torch.full_like(self.tuned_thresholds, float(self.threshold))
        return self.tuned_thresholds

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def decisions(self, probabilities: torch.Tensor) -> torch.Tensor:
        return probabilities > self.thresholds().to(probabilities)


def check_task_options(task: str, threshold: float | None, temperature: float | None) -> None:
    """``model.task`` with the options that fit it, or a one-line ``ConfigError``."""
    if task == "single" and threshold is not None:
        raise ConfigError("model.threshold", threshold, "null for a single-label model (it takes the top genre)")
    if task == "multilabel" and temperature is not None:
        raise ConfigError("model.temperature", temperature, "null for a multi-label model (no temperature scaling)")
    if task not in TASKS:
        raise ConfigError("model.task", task, "single or multilabel (it follows data.task)")


def make_prediction_task(
    task: str, classes: Sequence[str], threshold: float | None = None, temperature: float | None = None
) -> PredictionTask:
    """The prediction task object for ``model.task`` (a checkpoint's ``task`` hyper-parameter)."""
    check_task_options(task, threshold, temperature)
    if task == "single":
        return SingleLabelPrediction(classes, temperature)
    return MultiLabelPrediction(classes, threshold)


def check_threshold(threshold: float | None, key: str = "model.threshold") -> None:
    if threshold is not None and (isinstance(threshold, bool) or not 0 < float(threshold) < 1):
        raise ConfigError(key, threshold, "null (per-genre thresholds tuned on val) or a probability between 0 and 1")
