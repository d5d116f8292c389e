"""genre-report sweep_dir=<multirun folder> [metric=<name>] [order=ascending|descending]: a sweep
as one table, mean ± std over seeds (the work is in ``results/sweep_report.py``). With
``mlflow.tracking_uri=<uri> mlflow.sweep=<name>`` the sweep is read back from an MLflow server."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from genre_lightning.cli.common import CONFIG_PATH
from genre_lightning.results.sweep_report import report, write_report
from genre_lightning.utils.errors import ConfigError, exit_on_user_error

ORDERS = {"ascending": True, "descending": False, None: None}


@exit_on_user_error
def report_sweep(cfg: DictConfig) -> None:
    if cfg.order not in ORDERS:
        raise ConfigError(
            "order", cfg.order, "ascending, descending or null (losses and ECE ascending, the rest descending)"
        )
    if bool(cfg.sweep_dir) == bool(cfg.mlflow.tracking_uri):
        raise ConfigError(
            "sweep_dir", cfg.sweep_dir, "a multirun folder, or mlflow.tracking_uri=<server> instead (one of the two)"
        )
    if cfg.sweep_dir:
        report(cfg.sweep_dir, cfg.metric, ORDERS[cfg.order])
        return
    from genre_lightning.results.mlflow_sweep import collect_mlflow_jobs

    jobs, unfinished = collect_mlflow_jobs(cfg.mlflow.tracking_uri, cfg.mlflow.experiment, cfg.mlflow.sweep)
    write_report(jobs, unfinished, Path(cfg.output_dir), cfg.metric, ORDERS[cfg.order])


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="report")
def main(cfg: DictConfig) -> None:
    report_sweep(cfg)


if __name__ == "__main__":
    main()
