"""Test a checkpoint on a split and write what genre-train's test writes: genre-eval's task, and what
genre-ensemble runs on the ensemble it builds."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from genre_lightning.cli.common import build_callbacks, build_loggers, show_and_save_config, write_json
from genre_lightning.data.datamodule import PosterDataModule
from genre_lightning.data.split_choice import evaluation_split
from genre_lightning.models.checkpoint_io import load_module, read_checkpoint, training_augment
from genre_lightning.results.hparams import log_hparams_with_metrics
from genre_lightning.results.tracking import finish_run, log_config, log_environment
from genre_lightning.training.failed_images import images_skipped_during_run
from genre_lightning.training.module import GenreClassifier
from genre_lightning.utils.environment import environment, flat_environment
from genre_lightning.utils.errors import exit_on_user_error
from genre_lightning.utils.plain_values import to_python

log = logging.getLogger(__name__)


def eval_datamodule(cfg: DictConfig, model: GenreClassifier, checkpoint: dict) -> PosterDataModule:
    """The data module for ``cfg.split`` of the checkpoint's split file, with its training transform."""
    split_file = str(evaluation_split(cfg.ckpt_path, cfg.data.get("split_file")))
    datamodule = instantiate(
        cfg.data,
        classes=model.classes,
        split_file=split_file,
        test_split=cfg.split,
        augment=training_augment(checkpoint, cfg.data.get("augment")),
        task=model.hparams.task,  # what the checkpoint was trained for, whatever data.task says
    )
    datamodule.set_data_config(model.data_config)
    return datamodule


@exit_on_user_error
def evaluate(cfg: DictConfig, extra: dict | None = None) -> dict:
    """Test ``cfg.ckpt_path`` and write ``metrics.json`` (with ``extra``) into the run folder."""
    output_dir = Path(cfg.paths.output_dir)
    show_and_save_config(cfg, output_dir, show=cfg.get("print_config", True))
    pl.seed_everything(cfg.seed, workers=True)
    checkpoint = read_checkpoint(cfg.ckpt_path)
    model = load_module(GenreClassifier, checkpoint)
    if cfg.get("tta_hflip") is not None:
        model.set_flip_tta(cfg.tta_hflip)
    if cfg.get("tta") is not None:
        model.set_tta(cfg.tta)
    if cfg.get("threshold") is not None:
        model.set_threshold(cfg.threshold)
    datamodule = eval_datamodule(cfg, model, checkpoint)
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=build_loggers(cfg), callbacks=build_callbacks(cfg))
    env = (extra or {}).get("environment") or environment()  # genre-ensemble's, gathered when it built the model
    log_config(trainer.loggers, cfg)
    log_environment(trainer.loggers, env)
    metrics = to_python(trainer.test(model, datamodule=datamodule)[0])
    results = {
        "test": metrics,
        "test_ckpt_path": str(Path(cfg.ckpt_path).resolve()),
        "split": cfg.split,
        "split_file": datamodule.split_file,
        "skipped_during_run": images_skipped_during_run(model.failed_items, datamodule),
        "loss": model.loss_settings(),
        "environment": env,
        **(extra or {}),
    }
    temperature = getattr(model.task, "temperature", None)
    if temperature is not None:
        results["temperature"] = float(temperature)
    log_hparams_with_metrics(trainer.loggers, cfg, metrics, extra_params=flat_environment(env))
    write_json(output_dir / "metrics.json", results)
    finish_run(trainer.loggers, cfg, output_dir)
    log.info("Run folder: %s", output_dir)
    return results
