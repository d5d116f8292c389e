"""genre-train: fit a GenreClassifier, then test its best checkpoint and write metrics.json."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, open_dict

from genre_lightning.cli.common import CONFIG_PATH, build_callbacks, build_loggers, show_and_save_config, write_json
from genre_lightning.cli.teacher import teacher_for
from genre_lightning.data.datamodule import PosterDataModule
from genre_lightning.data.folds import ALL_FOLDS
from genre_lightning.data.split_choice import checkpoint_split, choose_split
from genre_lightning.launch.slurm import RequeueOnSignal, export_submitit_local_ranks, register_resolvers
from genre_lightning.launch.sweep import local_ddp_job, shared_split_file
from genre_lightning.results.hparams import log_hparams_with_metrics
from genre_lightning.results.tracking import finish_run, job_overrides, log_config, log_environment
from genre_lightning.training.distill import Distillation
from genre_lightning.training.failed_images import images_skipped_during_run
from genre_lightning.training.module import GenreClassifier
from genre_lightning.training.provenance import RecordProvenance
from genre_lightning.utils.distributed import weights_agree
from genre_lightning.utils.environment import environment, flat_environment
from genre_lightning.utils.errors import ConfigError, exit_on_user_error
from genre_lightning.utils.plain_values import to_python

log = logging.getLogger(__name__)
register_resolvers()  # used by conf/hydra/launcher/*.yaml


def register_search_sweeper() -> None:
    """``hydra/sweeper=cv_search`` (the hparams_search presets). Hydra finds plugins by listing the
    ``hydra_plugins`` package, which misses it in an editable install (a path hook that cannot be
    listed); registering the class by hand finds it in every install."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.genre_lightning_search.cv_search import CrossValidatedSearch

    Plugins.instance().register(CrossValidatedSearch)


register_search_sweeper()


def _use_the_chosen_split(cfg: DictConfig) -> None:
    """A resumed run takes its checkpoint run's split, a multirun job the sweep's (data/split_choice.py
    has the whole order); the data module takes it from ``data.split_file``."""
    choice = choose_split(
        cfg.data.split_file, checkpoint_split(cfg.ckpt_path), shared_split_file(cfg), cfg.paths.output_dir
    )
    if choice.source in ("checkpoint", "sweep"):
        with open_dict(cfg):
            cfg.data.split_file = str(choice.path)
        log.info(
            "Using the %s's split: %s", "resumed checkpoint" if choice.source == "checkpoint" else "sweep", choice.path
        )


def _check_cross_validation(cfg: DictConfig) -> None:
    """A cross-validation run trains one fold (or the refit): it must say which."""
    folds = cfg.data.get("folds")
    if folds is not None and cfg.data.get("fold") is None:
        last = f"{folds - 1}" if isinstance(folds, int) and not isinstance(folds, bool) else "K-1"
        raise ConfigError(
            "data.fold",
            None,
            f"the fold this run holds out, 0 to {last} (all folds: genre-train -m data.fold=0,...,{last}), "
            "or all (the refit on every poster)",
        )


def is_refit(cfg: DictConfig) -> bool:
    """``data.fold=all``: trained on every poster outside the fixed test part, with no validation split."""
    return cfg.data.get("folds") is not None and cfg.data.get("fold") == ALL_FOLDS


def _refit_settings(cfg: DictConfig) -> None:
    """The refit has no validation split: no validation loop, and its checkpoint is the last epoch
    (nothing is chosen on held-out posters; the epoch count is the one the cross-validation chose)."""
    with open_dict(cfg):
        cfg.trainer.limit_val_batches = 0
        cfg.trainer.num_sanity_val_steps = 0
        checkpoint = (cfg.get("callbacks") or {}).get("model_checkpoint")
        if checkpoint:
            checkpoint.monitor = None
            checkpoint.filename = "refit-epoch{epoch:02d}"
    log.info("Refit on every poster (data.fold=all): no validation split; the last epoch is the model")


def _resume_in_place(cfg: DictConfig, trainer: pl.Trainer) -> str | None:
    """The checkpoint to resume from: this run folder's own ``last.ckpt`` if it has one, else ``ckpt_path``.

    A requeued Slurm job (or a rerun with ``hydra.run.dir=<run>``) continues where it stopped, also
    when it was started with ``ckpt_path=``: that checkpoint is older than the folder's own.
    """
    last = RequeueOnSignal.checkpoint_path(trainer)
    if not cfg.get("auto_resume", True) or not last.is_file():
        return cfg.ckpt_path
    log.info("Resuming from %s (this run folder's last checkpoint)", last)
    return str(last)


def build(
    cfg: DictConfig, extra_callbacks: Sequence[Callback] = ()
) -> tuple[PosterDataModule, GenreClassifier, pl.Trainer]:
    """The data module, the model and the trainer, each from its config group."""
    datamodule: PosterDataModule = instantiate(
        cfg.data, required_splits=["train", *(["test"] if cfg.get("test") else [])]
    )
    model: GenreClassifier = instantiate(cfg.model, _recursive_=False)
    datamodule.set_data_config(model.data_config)
    callbacks = [*build_callbacks(cfg), *extra_callbacks]
    accumulation = {}
    if datamodule.accumulation_steps > 1:  # data.micro_batch_size
        if cfg.trainer.get("accumulate_grad_batches", 1) != 1:
            raise ConfigError(
                "trainer.accumulate_grad_batches",
                cfg.trainer.accumulate_grad_batches,
                "1 when data.micro_batch_size is set (it decides the accumulation)",
            )
        accumulation["accumulate_grad_batches"] = datamodule.accumulation_steps
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=build_loggers(cfg), **accumulation)
    return datamodule, model, trainer


def _fit_and_test(
    cfg: DictConfig, datamodule: PosterDataModule, model: GenreClassifier, trainer: pl.Trainer, env: dict[str, Any]
) -> dict[str, Any]:
    trainer.fit(model, datamodule=datamodule, ckpt_path=_resume_in_place(cfg, trainer), weights_only=True)
    ranks = weights_agree(model) if trainer.world_size > 1 else None  # before test loads the best checkpoint
    fit_metrics = to_python(trainer.callback_metrics)
    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint else ""
    results = {
        "best_ckpt_path": best_path or None,
        "best_val": (
            {checkpoint.monitor: to_python({"v": checkpoint.best_model_score})["v"]}
            if best_path and checkpoint.monitor
            else {}
        ),
        "final_val": {k: v for k, v in fit_metrics.items() if k.startswith("val/")},
    }
    if cfg.get("test"):
        # The best checkpoint, never the last weights (unless no checkpoint was saved at all).
        test_metrics = trainer.test(model, datamodule=datamodule, ckpt_path=best_path or None, weights_only=True)[0]
        results["test"] = to_python(test_metrics)
        # What trainer.test really loaded (None: the weights in memory at the end of training).
        results["test_ckpt_path"] = str(trainer.ckpt_path) if trainer.ckpt_path else None
    temperature = getattr(model.task, "temperature", None)
    if temperature is not None:  # of the tested checkpoint (test loads it), else of the last weights
        results["temperature"] = float(temperature)
    results["loss"] = model.loss_settings()
    results["skipped_during_run"] = images_skipped_during_run(model.failed_items, datamodule)
    if ranks is not None:
        results["ddp"] = ranks
    logged = {**results["final_val"], **results.get("test", {})}
    log_hparams_with_metrics(trainer.loggers, cfg, logged, extra_params=flat_environment(env))
    return results


@exit_on_user_error
def train(cfg: DictConfig) -> float | None:
    """Fit, test the best checkpoint, write ``metrics.json``; return ``cfg.optimized_metric``."""
    _check_cross_validation(cfg)
    if is_refit(cfg):
        _refit_settings(cfg)
    _use_the_chosen_split(cfg)
    export_submitit_local_ranks()
    output_dir = Path(cfg.paths.output_dir)
    show_and_save_config(cfg, output_dir, show=cfg.get("print_config", True))
    pl.seed_everything(cfg.seed, workers=True)
    env = environment()  # the software, code and machine: in every checkpoint, metrics.json and the trackers
    distill = distillation(cfg)
    datamodule, model, trainer = build(cfg, [RecordProvenance(env, job_overrides()), *([distill] if distill else [])])
    log_config(trainer.loggers, cfg)
    log_environment(trainer.loggers, env)
    if trainer.is_global_zero:
        # Scan and split now, before Lightning starts the other DDP processes: they then find the
        # split ready instead of waiting at a barrier (with a timeout) while rank 0 scans.
        datamodule.prepare_data()

    started = time.perf_counter()
    with local_ddp_job(cfg, output_dir, trainer.world_size):
        results = _fit_and_test(cfg, datamodule, model, trainer, env)
    results["wall_s"] = round(time.perf_counter() - started, 1)  # fit and test (genre-report sums the folds)
    if distill is not None:
        results["distill"] = distill.record
    if datamodule.cv is not None:
        results["cross_validation"] = datamodule.cross_validation()
    results["environment"] = env
    write_json(output_dir / "metrics.json", results)
    finish_run(trainer.loggers, cfg, output_dir, results["best_ckpt_path"])
    rank_zero_info(f"Run folder: {output_dir}")

    return None if is_refit(cfg) else optimized_metric_value(cfg.get("optimized_metric"), results)


def distillation(cfg: DictConfig) -> Distillation | None:
    """The callback that attaches the teacher's targets (``distill.teacher``; docs/distillation.md), or None."""
    settings = cfg.get("distill") or {}
    if not settings.get("teacher"):
        return None
    spec = teacher_for(settings.teacher, cfg.data.get("cache_dir"))
    return Distillation(spec, settings.get("alpha", 0.5), settings.get("temperature", 2.0))


def optimized_metric_value(metric: str | None, results: dict) -> float | None:
    """What a sweeper optimises: the metric at the best checkpoint, else at the last validation, else
    the test value (``trainer.test`` clears the validation metrics, so they come from ``results``)."""
    if not metric:
        return None
    for section in ("best_val", "final_val", "test"):
        if metric in (results.get(section) or {}):
            return float(results[section][metric])
    logged = sorted({name for section in ("best_val", "final_val", "test") for name in results.get(section) or {}})
    raise ConfigError("optimized_metric", metric, f"a metric this run logs: one of {logged}")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
