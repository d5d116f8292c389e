"""genre-report sweep_dir=<multirun folder> [metric=<name>] [order=ascending|descending]: a sweep
as one table, mean ± std over seeds, each recipe against the best one on the same posters; a
cross-validation sweep out of fold, with intervals (the work is in ``results/sweep_report.py`` and
``results/cv_report.py``). With ``mlflow.tracking_uri=<uri> mlflow.sweep=<name>`` the sweep is read
back from an MLflow server. A cross-validation also gets its data-quality section (confused pairs, hardest
posters, label issues: ``results/data_quality.py``); ``oof_csv=<oof_predictions.csv>`` gives that section
for a bare out-of-fold table."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from genre_lightning.cli.common import CONFIG_PATH
from genre_lightning.results.sweep_report import report, write_report
from genre_lightning.utils.errors import ConfigError, exit_on_user_error

ORDERS = {"ascending": True, "descending": False, None: None}
INCOMPLETE = ("fail", "skip", "common")


@exit_on_user_error
def report_sweep(cfg: DictConfig) -> None:
    if cfg.order not in ORDERS:
        raise ConfigError(
            "order", cfg.order, "ascending, descending or null (losses and ECE ascending, the rest descending)"
        )
    sources = [bool(cfg.sweep_dir), bool(cfg.mlflow.tracking_uri), bool(cfg.oof_csv)]
    if sum(sources) != 1:
        raise ConfigError(
            "sweep_dir",
            cfg.sweep_dir,
            "a multirun folder, or mlflow.tracking_uri=<server> or oof_csv=<oof_predictions.csv> instead (one of them)",
        )
    if cfg.label_issues not in (None, True, False):
        raise ConfigError("label_issues", cfg.label_issues, "null (on for a cross-validation), true or false")
    if cfg.oof_csv:
        from genre_lightning.results.data_quality import report_oof

        print(report_oof(cfg.oof_csv, cfg.label_issues_recipe))
        return
    if isinstance(cfg.samples, bool) or not isinstance(cfg.samples, int) or cfg.samples < 100:
        raise ConfigError("samples", cfg.samples, "an integer of at least 100 (bootstrap samples)")
    if cfg.incomplete not in INCOMPLETE:
        raise ConfigError("incomplete", cfg.incomplete, f"one of {list(INCOMPLETE)}")
    if cfg.sweep_dir:
        report(
            cfg.sweep_dir,
            cfg.metric,
            ORDERS[cfg.order],
            cfg.group_seeds,
            cfg.samples,
            cfg.bootstrap_seed,
            incomplete=cfg.incomplete,
            label_issues=cfg.label_issues,
            label_issues_recipe=cfg.label_issues_recipe,
            compare_with=[cfg.compare_with] if isinstance(cfg.compare_with, str) else list(cfg.compare_with or []),
        )
        return
    from genre_lightning.results.mlflow_sweep import collect_mlflow_jobs

    jobs, unfinished = collect_mlflow_jobs(cfg.mlflow.tracking_uri, cfg.mlflow.experiment, cfg.mlflow.sweep)
    write_report(jobs, unfinished, Path(cfg.output_dir), cfg.metric, ORDERS[cfg.order], cfg.group_seeds)


def bare_path(arguments: list[str]) -> str | None:
    """A folder typed without ``sweep_dir=`` (Hydra would reject it with an override-grammar error)."""
    for argument in arguments:
        if argument.startswith("-") or "=" in argument:
            continue
        if os.sep in argument or Path(argument).is_dir():
            return argument
    return None


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="report")
def _hydra_main(cfg: DictConfig) -> None:
    report_sweep(cfg)


def main() -> None:
    # Before Hydra parses the command line: `genre-report outputs/train/multiruns/<time>` is what many
    # type first, and Hydra's answer to it (an override-grammar error) does not say what to do.
    path = bare_path(sys.argv[1:])
    if path is not None:
        print(f"error: {path!r} is not a key=value argument: use genre-report sweep_dir={path}", file=sys.stderr)
        raise SystemExit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
