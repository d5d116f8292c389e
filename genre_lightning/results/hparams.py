"""Fill TensorBoard's HPARAMS tab: the run's config beside its final metrics.

The summary goes into the logger's ``log_dir`` through torch's public ``FileWriter``, in an
event file of its own beside the run's. Not ``TensorBoardLogger.log_hyperparams(params, metrics)``:
that also logs every metric again as a scalar (at a step the curves do not have), a stray point
on the ``val/acc`` curve. The tab reads each metric's last value from the scalars the run
already logged (the last epoch's ``val/acc``, the test's ``test/acc``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import FileWriter
from torch.utils.tensorboard.summary import hparams

# Config keys that say where things go, not how the model was trained.
NOT_HYPERPARAMETERS = ("paths", "logger", "callbacks", "artifacts", "print_config")
NOT_HYPERPARAMETERS_FLAT = ("data.output_dir", "trainer.default_root_dir")
# The metrics shown in the tab, when the run logged them.
HPARAM_METRICS = (
    *("val/acc", "val/f1_macro", "val/loss", "test/acc", "test/f1_macro", "test/acc_top2", "test/ece"),
    *("test/map", "test/f1_micro"),  # multi-label runs
)


def flat_params(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as ``{"model.optimizer.lr": 0.001, ...}``; lists, None and booleans as text
    (TensorBoard would show a boolean as 0.0/1.0)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    kept = {k: v for k, v in container.items() if k not in NOT_HYPERPARAMETERS}
    flat = pd.json_normalize(kept, sep=".").iloc[0].to_dict() if kept else {}
    return {
        k: v if isinstance(v, int | float | str) and not isinstance(v, bool) else str(v)
        for k, v in flat.items()
        if k not in NOT_HYPERPARAMETERS_FLAT
    }


@rank_zero_only
def log_hparams_with_metrics(
    loggers: Iterable[Logger],
    cfg: DictConfig,
    logged: Mapping[str, Any],
    extra_params: Mapping[str, str] | None = None,
) -> list[str]:
    """Write the hparams summary for every TensorBoard logger; return the metric tags it shows.
    ``extra_params`` (e.g. the environment, ``environment.packages.torch``) join the config's."""
    metrics = {name: 0.0 for name in HPARAM_METRICS if name in logged}  # values are read from the scalars
    if not metrics:
        return []
    summaries = hparams({**flat_params(cfg), **(extra_params or {})}, metrics)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            writer = FileWriter(logger.log_dir)
            for summary in summaries:
                writer.add_summary(summary)
            writer.close()
    return list(metrics)
