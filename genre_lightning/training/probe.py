"""Linear probe: the classifier fitted in closed form on the frozen backbone's features.

``LinearProbe`` runs once, when training starts (``finetune.head_init=probe``): it computes the pooled features of every
training and validation image through the evaluation transform (averaged over the model's
test-time views, its mirror image and ``model.tta``'s scales and crops, so training and evaluation
see the same features), fits a
logistic regression on the training images for each ``C`` of a grid (multinomial for single-label
data; one-vs-rest, one binary regression per genre, for ``data.task=multilabel``), keeps the ``C``
with the lowest validation log-loss, and writes that regression into the model's linear
classifier (standardisation folded into its weights and bias).

That is the "LP" of LP-FT (Kumar et al., ICLR 2022): fine-tuning then starts from a head that has
converged, instead of a random head whose large gradients distort the pretrained features.
``experiment=probe_cpu`` stops there (the backbone never trains); ``experiment=best_cpu``
fine-tunes everything from it at a small learning rate.

Features go through the ``FrozenFeatureCache`` stores when that callback is present, so the
validation and test epochs that follow reuse them instead of computing them again. Under DDP
each rank computes a shard of the features into the store the ranks share (written in chunks,
read memory-mapped), rank 0 alone fits the regression once, and every rank receives its result.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from lightning.pytorch import LightningModule, Trainer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader, Subset

from genre_lightning.data.dataset import PosterDataset, collate_posters
from genre_lightning.training.feature_cache import FrozenFeatureCache, backbone_fingerprint
from genre_lightning.training.feature_store import FeatureStore, store_folder, store_keys
from genre_lightning.utils.distributed import barrier, broadcast_from_zero
from genre_lightning.utils.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_C_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
PROBE_FILE = "probe.json"
CONSTANT_LOGIT = 1e4  # the logit of a genre every (or no) training image has


def compute_features(trainer: Trainer, pl_module: LightningModule, split: str, store: FeatureStore, batch_size: int):
    """This rank's shard of ``split``'s features, into ``store`` (written out for the other ranks)."""
    dataset = trainer.datamodule.evaluation_dataset(split)
    shard = Subset(dataset, range(trainer.global_rank, len(dataset), trainer.world_size))
    workers = getattr(trainer.datamodule, "num_workers", 0)
    loader = DataLoader(shard, batch_size=batch_size, collate_fn=collate_posters, num_workers=workers)
    views = pl_module.test_time_augmentation("val")  # the probe is fitted on the features it is evaluated on
    for batch in loader:
        if batch["target"].numel() == 0:
            continue
        images = batch["image"].to(pl_module.device)
        store.features(batch["key"], images, lambda x, parts=None: pl_module.backbone_features(x, views, parts))
    store.flush()


def stored_features(dataset: PosterDataset, store: FeatureStore, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(features, targets) of every image of ``dataset`` that has stored features (an image no rank
    could read has none), in dataset order. Targets: class indices, or multi-hot rows (multilabel)."""
    keys = store_keys(dataset.keys)
    present = [i for i, key in enumerate(keys) if key in store]
    if not present:
        raise ConfigError("data", split, f"a {split} split with readable images for the linear probe")
    features = store.rows([keys[i] for i in present]).astype(np.float64)
    if dataset.multi_hot:
        targets = np.zeros((len(present), dataset.num_classes), dtype=np.int64)
        for row, i in enumerate(present):
            targets[row, list(dataset.label_sets[i])] = 1
    else:
        targets = np.asarray(dataset.targets)[present]
    return features, targets


def fit_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None,
    c_grid: Sequence[float],
    num_classes: int,
    max_iter: int = 3000,
    class_weights: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, float]], float]:
    """Logistic regressions on standardised features, one per ``C``; the one with the lowest
    validation log-loss as ``(weight (classes, dim), bias (classes,))`` of a linear layer on the raw
    features, with every ``C``'s validation log-loss and accuracy and the chosen ``C``. Without a
    validation split (``val=None``, the refit) the grid holds the one ``C`` to use.
    ``class_weights`` (per class index, ``model.class_weights``): scikit-learn's ``class_weight``, and
    the validation log-loss that chooses ``C`` weighs each poster by its genre's weight too."""
    scaler = StandardScaler().fit(train[0])
    train_x = scaler.transform(train[0])
    labels = np.arange(num_classes)
    weight_of = dict(enumerate(map(float, class_weights))) if class_weights is not None else None
    soft = train[1].ndim == 2  # distillation's soft targets
    fit_x, fit_y, fit_weight = expand_soft_targets(train_x, train[1]) if soft else (train_x, train[1], None)
    scores, fits = [], {}
    for c in c_grid:
        regression = LogisticRegression(C=c, max_iter=max_iter, class_weight=weight_of)
        regression.fit(fit_x, fit_y, sample_weight=fit_weight)
        fits[c] = regression
        if val is None:
            scores.append({"C": float(c), "val_log_loss": None, "val_acc": None})
            continue
        val_x = scaler.transform(val[0])
        val_weights = np.asarray(class_weights, dtype=float)[val[1]] if class_weights is not None else None
        probabilities = np.zeros((len(val_x), num_classes))
        probabilities[:, regression.classes_] = regression.predict_proba(val_x)
        scores.append(
            {
                "C": float(c),
                "val_log_loss": float(log_loss(val[1], probabilities, labels=labels, sample_weight=val_weights)),
                "val_acc": float((probabilities.argmax(1) == val[1]).mean()),
            }
        )
    best = min(scores, key=lambda s: (s["val_log_loss"] or 0.0, -s["C"]))
    regression = fits[best["C"]]
    # A genre absent from the training split keeps a weight of zero and a very low bias.
    weight = np.zeros((num_classes, train_x.shape[1]))
    bias = np.full(num_classes, -1e4)
    weight[regression.classes_], bias[regression.classes_] = regression.coef_, regression.intercept_
    if len(regression.classes_) == 2:  # sklearn's binary case keeps one row: class 1 against class 0
        weight[regression.classes_] = np.stack([-regression.coef_[0], regression.coef_[0]]) / 2
        bias[regression.classes_] = np.array([-regression.intercept_[0], regression.intercept_[0]]) / 2
    # Standardisation folded in: w.(x - mean)/scale + b = (w/scale).x + (b - w.(mean/scale)).
    raw_weight = weight / scaler.scale_
    raw_bias = bias - raw_weight @ scaler.mean_
    return raw_weight, raw_bias, scores, best["C"]


def expand_soft_targets(x: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft targets ``q`` (N, C) (distillation, ``training/distill.py``) as a weighted hard-label set:
    each row once per genre ``c`` with ``q_c > 0``, weighing ``q_c``. Its weighted log-loss is the
    cross-entropy with the soft targets, and the weights sum to N, so ``C`` keeps its meaning."""
    rows, genres = np.nonzero(targets > 0)
    return x[rows], genres, targets[rows, genres]


def fit_one_vs_rest(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None,
    c_grid: Sequence[float],
    max_iter: int = 3000,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, float]], float]:
    """Multi-label: one binary logistic regression per genre (scikit-learn's ``OneVsRestClassifier``)
    on standardised features, for each ``C``; the ``C`` with the lowest validation log-loss (the
    mean over genres of each genre's binary log-loss) as ``(weight, bias)`` of a linear layer on the
    raw features whose sigmoid is each genre's probability. ``val_acc`` is the top-1 "any true
    genre" accuracy. A genre without positives (or negatives) in training gets a constant logit.
    Without a validation split (``val=None``, the refit) the grid holds the one ``C`` to use."""
    scaler = StandardScaler().fit(train[0])
    train_x = scaler.transform(train[0])
    genres = train[1].shape[1]
    scores, fits = [], {}
    for c in c_grid:
        with warnings.catch_warnings():  # "Label k is present in all training examples": handled below
            warnings.simplefilter("ignore", UserWarning)
            model = OneVsRestClassifier(LogisticRegression(C=c, max_iter=max_iter)).fit(train_x, train[1])
        weight, bias = np.zeros((genres, train_x.shape[1])), np.zeros(genres)
        for genre, estimator in enumerate(model.estimators_):
            if isinstance(estimator, LogisticRegression):
                weight[genre], bias[genre] = estimator.coef_[0], estimator.intercept_[0]
            else:  # a constant predictor: every training image had (or lacked) this genre
                bias[genre] = CONSTANT_LOGIT if train[1][:, genre].all() else -CONSTANT_LOGIT
        fits[c] = (weight, bias)
        if val is None:
            scores.append({"C": float(c), "val_log_loss": None, "val_acc": None})
            continue
        val_x = scaler.transform(val[0])
        probabilities = 1 / (1 + np.exp(-np.clip(val_x @ weight.T + bias, -50, 50)))
        losses = [log_loss(val[1][:, g], probabilities[:, g], labels=[0, 1]) for g in range(genres)]
        top = probabilities.argmax(1)
        scores.append(
            {
                "C": float(c),
                "val_log_loss": float(np.mean(losses)),
                "val_acc": float(val[1][np.arange(len(top)), top].mean()),
            }
        )
    best = min(scores, key=lambda s: (s["val_log_loss"] or 0.0, -s["C"]))
    weight, bias = fits[best["C"]]
    raw_weight = weight / scaler.scale_
    return raw_weight, bias - raw_weight @ scaler.mean_, scores, best["C"]


class LinearProbe:
    """Fit the model's classifier as a logistic regression on its frozen backbone's features.

    Called by ``GradualUnfreeze`` when training starts (``finetune.head_init=probe``), before any
    layer is unfrozen. Writes ``probe.json`` (every ``C`` with its validation log-loss and accuracy)
    into the run folder.

    Args:
        c_grid: inverse regularisation strengths to try; the lowest validation log-loss wins.
        batch_size: images per forward pass while computing features.
    """

    def __init__(self, c_grid: Sequence[float] = DEFAULT_C_GRID, batch_size: int = 32) -> None:
        if isinstance(c_grid, int | float | str) or not c_grid or any(float(c) <= 0 for c in c_grid):
            raise ConfigError("finetune.probe_c_grid", c_grid, "a non-empty list of positive numbers, e.g. [1e-3,1e-2]")
        self.c_grid = [float(c) for c in c_grid]
        self.batch_size = batch_size

    def fit(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        """Fit, write the head, and return the summary that ``probe.json`` holds."""
        classifier = pl_module.net.get_classifier()
        if not isinstance(classifier, nn.Linear):
            raise ConfigError(
                "finetune.head_init",
                "probe",
                f"random for {pl_module.hparams.backbone} (its head is not one nn.Linear)",
            )
        has_val = trainer.datamodule.has_posters("val")
        if not has_val and len(self.c_grid) > 1:
            raise ConfigError(
                "finetune.probe_c_grid",
                self.c_grid,
                "one C for a run without a validation split (data.fold=all): the C that genre-report "
                "printed for the cross-validation, e.g. finetune.probe_c_grid=[0.01]",
            )
        started = time.perf_counter()
        store = self._store(trainer, pl_module)
        for split in ("train", "val") if has_val else ("train",):
            compute_features(trainer, pl_module, split, store, self.batch_size)
        barrier()  # every rank's features are in the store
        # fitted once, on every rank's features, then sent to every rank
        fitted = self._fit_on_rank_zero(trainer, pl_module, store, has_val) if trainer.is_global_zero else None
        weight, bias, scores, chosen, train_images, val_images = broadcast_from_zero(fitted)
        with torch.no_grad():
            classifier.weight.copy_(torch.as_tensor(weight, dtype=classifier.weight.dtype))
            classifier.bias.copy_(torch.as_tensor(bias, dtype=classifier.bias.dtype))
        best = next(s for s in scores if s["C"] == chosen)
        summary = {
            "chosen_C": chosen,
            "val_log_loss": best["val_log_loss"],
            "val_acc": best["val_acc"],
            "train_images": train_images,
            "val_images": val_images,
            "class_weights": pl_module.hparams.get("class_weights"),
            "seconds": round(time.perf_counter() - started, 2),
            "grid": scores,
        }
        if trainer.is_global_zero:
            log.info(
                "Linear probe head: C=%g of %s by validation log-loss (%s; val acc %s), "
                "%d train / %d val images, %.1f s",
                chosen, self.c_grid, best["val_log_loss"], best["val_acc"],
                train_images, val_images, summary["seconds"],
            )  # fmt: skip
            folder = Path(trainer.default_root_dir)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / PROBE_FILE).write_text(json.dumps(summary, indent=2))
        return summary

    def _fit_on_rank_zero(self, trainer: Trainer, pl_module: LightningModule, store: FeatureStore, has_val: bool):
        """The regression on the stored features of every rank: (weight, bias, scores, C, train, val images)."""
        store.refresh()
        datamodule = trainer.datamodule
        train = stored_features(datamodule.evaluation_dataset("train"), store, "train")
        distill = getattr(pl_module, "distill", None)  # a teacher's targets (training/distill.py)
        if distill is not None:
            keys = [key for key in datamodule.evaluation_dataset("train").keys if store_keys([key])[0] in store]
            train = (train[0], distill.probe_targets(keys, train[1]))
        val = stored_features(datamodule.evaluation_dataset("val"), store, "val") if has_val else None
        weights = getattr(pl_module.task, "class_weights", None)  # model.class_weights, resolved
        fit = (
            fit_one_vs_rest
            if pl_module.task.multilabel
            else partial(
                fit_probe,
                num_classes=len(pl_module.classes),
                class_weights=weights.tolist() if weights is not None else None,
            )
        )
        return (*fit(train, val, self.c_grid), len(train[1]), len(val[1]) if val is not None else 0)

    @staticmethod
    def _store(trainer: Trainer, pl_module: LightningModule) -> FeatureStore:
        """The feature cache's store for evaluation features (validation and test then reuse it), or
        a store of its own when the run has no feature cache."""
        cache = next((c for c in trainer.callbacks if isinstance(c, FrozenFeatureCache)), None)
        if cache is None:
            name = f"probe-{backbone_fingerprint(pl_module)}"
            return FeatureStore(name, store_folder(trainer, None, name), rank=trainer.global_rank)
        return cache.store_for(trainer, pl_module, "val")
