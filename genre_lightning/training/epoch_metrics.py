"""Epoch metrics of a LightningModule under DDP: computed on every rank in the same order, then logged
as the global values they already are (the rule in ``utils/distributed.py``)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torchmetrics import Metric, MetricCollection

from genre_lightning.utils.distributed import any_rank


def _update_called(metric: Metric | MetricCollection) -> bool:
    members = metric.values() if isinstance(metric, MetricCollection) else [metric]
    return any(member.update_called for member in members)


class EpochMetricsLogging:
    """``GenreClassifier``'s epoch logging (a mixin of the LightningModule: ``self.log_dict``, its
    stage metrics, epoch losses and "any true genre" metrics, and its task)."""

    def _log_epoch_metrics(self, stage: str) -> None:
        """Compute the stage's epoch metrics on every rank and log the (already global) values.

        compute() syncs each metric across DDP ranks. Whether a metric was updated can differ between
        ranks (a rank whose images all failed, a Mixup epoch with one odd batch), so the ranks first
        agree on which metrics to compute, in one collective; then all of them compute the same ones
        in the same order (the rule in utils/distributed.py).
        """
        metrics = {
            "": self._stage_metrics(stage),
            f"{stage}/loss": getattr(self, f"{stage}_loss"),
            f"{stage}/{self.task.any_true_metric}": getattr(self, f"{stage}_any_true"),
        }
        if stage == "test" and self.test_uncalibrated is not None:
            metrics["test/ece_uncalibrated"] = self.test_uncalibrated
        updated = any_rank([_update_called(metric) for metric in metrics.values()])
        values: dict[str, torch.Tensor] = {}
        for (name, metric), anywhere in zip(metrics.items(), updated, strict=True):
            if anywhere:
                result = metric.compute()
                values.update(result if isinstance(result, dict) else {name: result})
            metric.reset()
        # sync_dist=False: the values are global already, and a lazy sync is what broke DDP (utils/distributed.py).
        self._log_global_values(values, prog_bar=stage in ("train", "val"))

    def _log_global_values(self, values: Mapping[str, Any], prog_bar: bool = False) -> None:
        with warnings.catch_warnings():
            # Lightning recommends sync_dist=True for epoch values under DDP; these are synced already.
            warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")
            self.log_dict(dict(values), prog_bar=prog_bar, sync_dist=False)
