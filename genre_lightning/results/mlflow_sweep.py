"""A sweep read back from an MLflow tracking server instead of its folder, for ``genre-report``.

Each job of a sweep is one MLflow run of the task's experiment, tagged by ``genre_lightning.results.tracking``
with its sweep (the multirun folder's name) and its overrides, and holding the job's
``metrics.json`` as an artifact: the same inputs the folder report reads, so both give one table.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd

from genre_lightning.results.sweep_report import job_row, parse_override
from genre_lightning.utils.errors import ConfigError, UserFacingError


def collect_mlflow_jobs(tracking_uri: str, experiment: str, sweep: str | None) -> tuple[pd.DataFrame, list[Path]]:
    """One row per run of ``experiment`` (of ``sweep`` only, when given: a multirun folder or its
    name) with ``metrics.json``; and the run names of those without it (failed or unfinished)."""
    try:
        from mlflow import MlflowClient
        from mlflow.artifacts import download_artifacts
    except ModuleNotFoundError:
        raise UserFacingError('genre-report from MLflow needs mlflow: pip install "genre-lightning[mlflow]"') from None
    from genre_lightning.results.tracking import check_reachable

    check_reachable("mlflow.tracking_uri", tracking_uri)
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ConfigError("mlflow.experiment", experiment, f"an experiment on {tracking_uri}: one of {names}")
    query = f"tags.sweep = '{Path(sweep).name}'" if sweep else ""
    runs = client.search_runs([found.experiment_id], filter_string=query, order_by=["attributes.start_time ASC"])
    if not runs:
        raise ConfigError("mlflow.sweep", sweep, f"a sweep with runs in experiment {experiment!r}")
    rows, unfinished = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for run in runs:
            name = run.info.run_name or run.info.run_id
            overrides = dict(parse_override(o) for o in json.loads(run.data.tags.get("overrides", "[]")))
            if "metrics.json" not in {a.path for a in client.list_artifacts(run.info.run_id)}:
                unfinished.append(Path(name))
                continue
            local = download_artifacts(
                run_id=run.info.run_id,
                artifact_path="metrics.json",
                dst_path=f"{scratch}/{run.info.run_id}",
                tracking_uri=tracking_uri,
            )
            rows.append(job_row(name, overrides, json.loads(Path(local).read_text())))
    return pd.DataFrame(rows), unfinished
