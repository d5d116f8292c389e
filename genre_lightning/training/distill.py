"""Knowledge distillation (``distill.teacher``): the student learns from the filed genre and from a
teacher's temperature-softened probabilities.

For a poster with filed genre ``y``, student logits ``s`` and teacher logits ``t``:

- fine-tuning recipes minimise ``(1 - alpha) * CE(y, s) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T))``
  (Hinton et al., 2015; ``CE`` is the task's own loss: label smoothing, class weights, focal as configured;
  ``T^2`` keeps the soft term's gradients on the scale of the hard one's as ``T`` grows);
- the linear probe (``training/probe.py``) fits its logistic regression on the mixture target
  ``q = (1 - alpha) * onehot(y) + alpha * softmax(t/T)`` (cross-entropy with soft targets; the
  student's own temperature stays 1, so ``T`` only softens the teacher).

``alpha=0`` is plain training. The teacher is resolved and checked when training starts, by the
function the ``Distillation`` callback is given (``cli/teacher.py``); its logits for the training
posters are attached to the module as a ``TeacherTargets``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer

from genre_lightning.training.feature_store import store_keys
from genre_lightning.utils.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class StudentSplit:
    """What a teacher is checked against: the student's genres, fold and reported posters."""

    classes: list[str]
    fold: int | str | None  # None: not a cross-validation run
    fold_digest: str | None
    test_keys: set[str] = field(default_factory=set)  # content hashes (or paths) of the test split


def check_settings(alpha: Any, temperature: Any) -> tuple[float, float]:
    """``distill.alpha`` in [0, 1] and ``distill.temperature`` > 0, as floats."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
        raise ConfigError("distill.alpha", alpha, "a number in [0, 1]: the teacher's share of the target")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 < temperature < math.inf:
        raise ConfigError("distill.temperature", temperature, "a number > 0 (1: the teacher's own probabilities)")
    return float(alpha), float(temperature)


def soft_targets(teacher_logits: np.ndarray, targets: np.ndarray, alpha: float, temperature: float) -> np.ndarray:
    """The probe's mixture target ``(1 - alpha) * onehot + alpha * softmax(teacher / T)``, per row."""
    scaled = teacher_logits / temperature
    scaled = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    one_hot = np.eye(teacher_logits.shape[1])[targets]
    return (1 - alpha) * one_hot + alpha * scaled / scaled.sum(axis=1, keepdims=True)


def distillation_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, the batch mean."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * temperature**2


class TeacherTargets:
    """The teacher's logits of the training posters, by poster key, and the losses that use them."""

    def __init__(self, keys: Sequence[str], logits: np.ndarray, alpha: float, temperature: float) -> None:
        self.alpha, self.temperature = alpha, temperature
        self.rows = {key: row for key, row in zip(store_keys(keys), logits, strict=True) if np.isfinite(row).all()}

    def logits(self, keys: Sequence[str]) -> np.ndarray:
        stored = store_keys(keys)
        missing = [key for key in stored if key not in self.rows]
        if missing:  # a poster the teacher could not read, or not a training poster
            valid = f"teacher logits for every training poster (none for {missing[0]})"
            raise ConfigError("distill.teacher", None, valid)
        return np.stack([self.rows[key] for key in stored])

    def loss(self, hard_loss: torch.Tensor, student_logits: torch.Tensor, keys: Sequence[str]) -> torch.Tensor:
        """The fine-tuning loss of a batch, from the task's loss on the filed genres."""
        teacher = torch.as_tensor(self.logits(keys), device=student_logits.device)
        soft = distillation_term(student_logits, teacher, self.temperature)
        return (1 - self.alpha) * hard_loss + self.alpha * soft

    def probe_targets(self, keys: Sequence[str], targets: np.ndarray) -> np.ndarray:
        return soft_targets(self.logits(keys).astype(np.float64), targets, self.alpha, self.temperature)


# (student split) -> (logits of (paths, keys), what to record of the teacher)
TeacherFor = Callable[[StudentSplit], tuple[Callable[[Sequence[str], Sequence[str]], np.ndarray], dict[str, Any]]]


class Distillation(Callback):
    """Before training: resolve and check the teacher for this run, get its logits of every training
    poster (cached), and attach them to the module (``pl_module.distill``); ``record`` says which
    teacher taught (metrics.json's ``distill``)."""

    def __init__(self, teacher_for: TeacherFor, alpha: float, temperature: float) -> None:
        self.teacher_for = teacher_for
        self.alpha, self.temperature = check_settings(alpha, temperature)
        self.record: dict[str, Any] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or getattr(pl_module, "distill", None) is not None:
            return
        if pl_module.task.multilabel:
            raise ConfigError("data.task", "multilabel", "single with distill.teacher (distillation is single-label)")
        if pl_module.mixup is not None:
            valid = "null with distill.teacher (a mixed image has no teacher target)"
            raise ConfigError("model.mixup", pl_module.hparams.mixup, valid)
        datamodule = trainer.datamodule
        state = datamodule.state_dict()
        test = datamodule.datasets.get("test")
        student = StudentSplit(
            list(pl_module.classes),
            datamodule.cv.fold if datamodule.cv is not None else None,
            state.get("fold_digest"),
            {key.lower() for key in test.keys} if test is not None else set(),
        )
        logits_of, record = self.teacher_for(student)
        train = datamodule.datasets["train"]
        logits = logits_of([str(p) for p in train.paths], list(train.keys))
        pl_module.distill = TeacherTargets(train.keys, logits, self.alpha, self.temperature)
        self.record = {**record, "alpha": self.alpha, "temperature": self.temperature, "train_posters": len(train)}
        log.info("Distilling from %s (alpha %g, T %g)", record.get("checkpoint"), self.alpha, self.temperature)
