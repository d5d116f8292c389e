"""Experiment tracking beside TensorBoard: MLflow and Weights & Biases (``logger=mlflow|wandb|many``).

The loggers are Lightning's own (``MLFlowLogger``, ``WandbLogger``); this module builds them from
their config groups and gives every tracker the same things, through the loggers' public APIs:

* at the start (:func:`log_config`): the resolved config, flattened (``model.backbone``,
  ``data.batch_size``, ...), as parameters; Lightning then logs every metric as it goes;
* with it (:func:`log_environment`): where the run came from (packages, git commit, machine);
* at the end (:func:`finish_run`): the run folder's files (``metrics.json``, ``config.yaml``,
  ``annotations.csv``, the tables), the figures, and the best checkpoint when
  ``logger.<tracker>.log_model=true``.

A tracker run belongs to its run folder: its id is kept in ``<run>/tracking.json``, so a resumed
run or a requeued Slurm job logs into the same run. Every job of a sweep lands in the same MLflow
experiment (named after the task) and the same W&B group, tagged with its overrides. A server
that cannot be reached is a one-line error when the logger is built, before any training.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from genre_lightning.results.hparams import flat_params
from genre_lightning.utils.environment import flat_environment
from genre_lightning.utils.errors import UserFacingError

log = logging.getLogger(__name__)

RUN_IDS_FILE = "tracking.json"
# What finish_run sends from the run folder (those that exist), and the figures under figures/.
RUN_FILES = (
    "metrics.json",
    "config.yaml",
    "annotations.csv",
    "data_report.json",
    "test_predictions.csv",
    "confusion_matrix.csv",
)
FALLBACK = "or train without it: logger=tensorboard"


# ----------------------------------------------------------------------------- the job's identity
def job_overrides() -> list[str]:
    """The command-line overrides of this job (a sweep job's own values included)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def sweep_name() -> str | None:
    """The multirun folder's name for a sweep job (what its jobs share), else None."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir).name
    return None


def run_name(run_dir: str | Path) -> str:
    """``<time>`` for a run, ``<sweep time>/<job number>`` for a sweep job: the folder's own name."""
    run_dir = Path(run_dir)
    sweep = sweep_name()
    return f"{sweep}/{run_dir.name}" if sweep else run_dir.name


def job_tags(run_dir: str | Path) -> dict[str, str]:
    """Tags that find a run again: its folder, its sweep, and its overrides (also one tag each)."""
    overrides = job_overrides()
    tags = {"run_dir": str(Path(run_dir).resolve()), "overrides": json.dumps(overrides)}
    if sweep_name():
        tags["sweep"] = sweep_name()
    for override in overrides:
        key, _, value = override.partition("=")
        tags["override." + re.sub(r"[^\w./ -]", "", key)] = value
    return tags


# ----------------------------------------------------------------------------- run ids in the run folder
def stored_run_id(run_dir: str | Path, tracker: str, where: str) -> str | None:
    """The run id this folder already has for ``tracker`` at ``where`` (server or project), if any."""
    path = Path(run_dir) / RUN_IDS_FILE
    entry = json.loads(path.read_text()).get(tracker, {}) if path.is_file() else {}
    return entry.get("run_id") if entry.get("where") == where else None


@rank_zero_only
def store_run_id(run_dir: str | Path, tracker: str, where: str, run_id: str) -> None:
    path = Path(run_dir) / RUN_IDS_FILE
    ids = json.loads(path.read_text()) if path.is_file() else {}
    ids[tracker] = {"run_id": run_id, "where": where}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ids, indent=2, sort_keys=True))


# ----------------------------------------------------------------------------- reachability
def check_reachable(key: str, uri: str, timeout_s: float = 5.0) -> None:
    """For an http(s) URI, open a connection to its host and port, so that a server that is down or
    a machine without network fails now, in one line, instead of after the client's retries."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
    except OSError as err:
        raise UserFacingError(
            f"{key}={uri!r} cannot be reached ({err.strerror or err}): start it, {FALLBACK}"
        ) from None


def _require(module: str, extra: str, logger: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UserFacingError(f'logger={logger} needs {module}: pip install "genre-lightning[{extra}]", {FALLBACK}')


# ----------------------------------------------------------------------------- the loggers
def mlflow_logger(
    tracking_uri: str,
    experiment_name: str,
    run_dir: str,
    artifact_location: str | None = None,
    tags: Mapping[str, str] | None = None,
    log_model: bool = False,  # read by finish_run (the best checkpoint), not by MLFlowLogger
) -> MLFlowLogger:
    """An ``MLFlowLogger`` whose run exists once this returns (on global rank 0), so that a store that
    does not answer stops the run here. A run folder that has a run on this store continues it."""
    _require("mlflow", "mlflow", "mlflow")
    check_reachable("logger.mlflow.tracking_uri", tracking_uri)
    if artifact_location is None and tracking_uri.startswith("sqlite:///"):
        artifact_location = str(Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts")
    run_id = stored_run_id(run_dir, "mlflow", tracking_uri)
    logger = MLFlowLogger(
        experiment_name=experiment_name,
        tracking_uri=tracking_uri,
        run_name=None if run_id else run_name(run_dir),
        tags=None if run_id else {**job_tags(run_dir), **(tags or {})},
        artifact_location=artifact_location,
        run_id=run_id,
    )
    if rank_zero_only.rank == 0:
        try:
            created = logger.run_id  # creates the experiment and the run (or finds the stored run)
        except Exception as err:  # MlflowException, a database or HTTP error: one line, what to do
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise UserFacingError(f"logger.mlflow.tracking_uri={tracking_uri!r} failed: {first}; {FALLBACK}") from None
        if run_id:
            log.info("MLflow: continuing run %s of this run folder", run_id)
        store_run_id(run_dir, "mlflow", tracking_uri, created)
    return logger


def wandb_logger(
    project: str,
    run_dir: str,
    entity: str | None = None,
    group: str | None = None,
    offline: bool = False,
    tags: Sequence[str] = (),
    log_model: bool = False,  # read by finish_run (the best checkpoint), not by WandbLogger
) -> WandbLogger:
    """A ``WandbLogger`` with a run id kept in the run folder (``resume="allow"``): a resumed or
    requeued run continues the same W&B run. ``offline`` (or ``WANDB_MODE=offline``) writes the run
    under ``<run>/wandb/`` for a later ``wandb sync``."""
    _require("wandb", "wandb", "wandb")
    offline = offline or os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled")
    if not offline:
        check_reachable("logger.wandb (WANDB_BASE_URL)", os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    where = f"{entity or ''}/{project}"
    run_id = stored_run_id(run_dir, "wandb", where)
    if run_id is None:
        run_id = uuid.uuid4().hex[:8]  # the form of W&B's own ids
        store_run_id(run_dir, "wandb", where, run_id)
    overrides = [o[:64] for o in job_overrides()]  # W&B tags are at most 64 characters
    return WandbLogger(
        project=project,
        entity=entity,
        save_dir=run_dir,
        id=run_id,
        resume="allow",
        name=run_name(run_dir),
        group=group or sweep_name(),
        tags=[*tags, *overrides],
        offline=offline,
    )


# ----------------------------------------------------------------------------- what every tracker receives
def _trackers(loggers: Iterable[Logger]) -> list[Logger]:
    return [lg for lg in loggers if isinstance(lg, MLFlowLogger | WandbLogger)]


@rank_zero_only
def log_config(loggers: Iterable[Logger], cfg: DictConfig) -> None:
    """The resolved config, flattened, as each tracker's parameters (TensorBoard gets it in its
    HPARAMS tab, ``results/hparams.py``). A continued MLflow run keeps the values it was started
    with (MLflow refuses to change a parameter): only new keys are added, and changes are named."""
    params = flat_params(cfg)
    for logger in _trackers(loggers):
        if isinstance(logger, MLFlowLogger):
            logged = logger.experiment.get_run(logger.run_id).data.params
            changed = sorted(k for k, v in params.items() if k in logged and logged[k] != str(v)[:250])
            if changed:
                log.warning("MLflow run %s keeps its first values of %s", logger.run_id, ", ".join(changed))
            logger.log_hyperparams({k: v for k, v in params.items() if k not in logged})
        else:
            logger.log_hyperparams(params)


@rank_zero_only
def log_environment(loggers: Iterable[Logger], env: Mapping[str, Any]) -> None:
    """Where the run came from (``utils/environment.py``): MLflow tags ``environment.*`` (tags, not
    parameters: a run resumed on another machine records the machine it finished on), W&B config
    entries, and a TensorBoard text summary (its TEXT tab; the HPARAMS tab has them too)."""
    flat = flat_environment(dict(env))
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            from mlflow.entities import RunTag  # only with logger=mlflow (an optional extra)

            logger.experiment.log_batch(logger.run_id, tags=[RunTag(k, v[:5000]) for k, v in flat.items()])
        elif isinstance(logger, WandbLogger):
            logger.experiment.config.update(flat, allow_val_change=True)
        elif isinstance(logger, TensorBoardLogger):
            table = "\n".join(f"| {k.removeprefix('environment.')} | {v} |" for k, v in flat.items())
            logger.experiment.add_text("environment", "| key | value |\n|---|---|\n" + table, global_step=0)


@rank_zero_only
def finish_run(
    loggers: Iterable[Logger], cfg: DictConfig, run_dir: str | Path, best_checkpoint: str | None = None
) -> None:
    """Send the run folder's files and figures (and the best checkpoint, if asked for) to each tracker,
    then close the W&B run (the next job of an in-process sweep starts its own)."""
    run_dir = Path(run_dir)
    files = [run_dir / name for name in RUN_FILES if (run_dir / name).is_file()]
    figures = sorted((run_dir / "figures").glob("*.png"))
    for logger in _trackers(loggers):
        name = "mlflow" if isinstance(logger, MLFlowLogger) else "wandb"
        checkpoint = best_checkpoint if cfg.logger[name].get("log_model") and best_checkpoint else None
        if isinstance(logger, MLFlowLogger):
            for path in files:
                logger.experiment.log_artifact(logger.run_id, str(path))
            for path in figures:
                logger.experiment.log_artifact(logger.run_id, str(path), "figures")
            if checkpoint:
                logger.experiment.log_artifact(logger.run_id, checkpoint, "checkpoints")
        else:
            for path in files:
                logger.experiment.save(str(path), base_path=str(run_dir), policy="now")
            for path in figures:
                logger.log_image(key=f"figures/{path.stem}", images=[str(path)])
            if checkpoint:
                logger.experiment.save(checkpoint, base_path=str(Path(checkpoint).parent.parent), policy="now")
            logger.experiment.finish()
        log.info("Sent %d files and %d figures to %s", len(files) + bool(checkpoint), len(figures), name)
