"""genre-report sweep_dir=<multirun folder> [metric=<name>] [order=ascending|descending]: a sweep
as one table, mean ± std over seeds (the work is in ``results/sweep_report.py``)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from genre_lightning.errors import ConfigError, exit_on_user_error
from genre_lightning.results.sweep_report import report
from genre_lightning.runtime import CONFIG_PATH

ORDERS = {"ascending": True, "descending": False, None: None}


@exit_on_user_error
def run(cfg: DictConfig) -> None:
    if cfg.order not in ORDERS:
        raise ConfigError(
            "order", cfg.order, "ascending, descending or null (losses and ECE ascending, the rest descending)"
        )
    report(cfg.sweep_dir, cfg.metric, ORDERS[cfg.order])


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="report")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
