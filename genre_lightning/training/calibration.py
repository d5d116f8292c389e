"""Temperature scaling (Guo et al., ICML 2017): one number ``T`` that divides a single-label model's
logits, fitted by minimising the validation split's negative log-likelihood.

Dividing every logit by one positive number never changes which genre is on top (accuracy, F1 and
the decisions stay exactly as they were); it only makes the probabilities more (``T < 1``) or less
(``T > 1``) confident, so that a poster given 0.8 is right about 80% of the time. The task object
keeps ``T`` as a buffer (``models/prediction_task.py``), so the checkpoint, the predictor, genre-eval,
genre-predict and the export sidecar all apply it alike.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from torchmetrics import Metric
from torchmetrics.functional.classification import multiclass_calibration_error

from genre_lightning.training.metrics import ECE_BINS

# The range searched for T: far beyond any useful value on either side.
T_BOUNDS = (1e-2, 1e2)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float | None:
    """The ``T`` that minimises the mean negative log-likelihood of ``softmax(logits / T)``, or None
    where there is no finite optimum (every image right by a margin, as on a few easy posters: the
    likelihood then only grows as ``T`` goes to 0, and such a ``T`` would make every answer certain).

    The likelihood is concave in ``1 / T``, so it has one optimum, found by a bounded Brent search
    over ``log T``."""
    z = logits.detach().double().cpu().numpy()
    y = targets.detach().long().cpu().numpy()
    rows = np.arange(len(y))
    if (z.argmax(axis=1) == y).all():  # every top genre right: the likelihood rises all the way to T = 0
        return None

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / math.exp(log_t), axis=1)[rows, y].mean())

    low, high = (math.log(b) for b in T_BOUNDS)
    result = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-5})
    if min(result.x - low, high - result.x) < 1e-2:  # at a bound: the optimum lies beyond it
        return None
    return float(math.exp(result.x))


def calibration_error(probabilities: torch.Tensor, targets: torch.Tensor) -> float:
    """The expected calibration error the test metrics report (15 equal-width bins of top-1 confidence)."""
    return float(
        multiclass_calibration_error(probabilities.float(), targets.long(), probabilities.shape[1], n_bins=ECE_BINS)
    )


def uncalibrated(probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """The probabilities before temperature scaling, recovered from the scaled ones:
    ``softmax(T * log p) = softmax(logits)`` (a per-row constant drops out of a softmax)."""
    logs = probabilities.double().clamp_min(torch.finfo(torch.float64).tiny).log()
    return (logs * float(temperature)).softmax(dim=-1).to(probabilities.dtype)


class ValidationLogits(Metric):
    """Every validation image's logits and target, gathered over DDP ranks when computed."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("logits", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.logits.append(logits.detach().float())
        self.targets.append(targets.detach().long())

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        def joined(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
            return torch.cat(state) if isinstance(state, list) else state

        return joined(self.logits), joined(self.targets)
