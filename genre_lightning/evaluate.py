"""genre-eval: evaluate a checkpoint on the test split it was trained with (or any split file)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from genre_lightning.data.datamodule import PosterDataModule
from genre_lightning.data.split_source import ANNOTATIONS_FILE, checkpoint_split, choose_split
from genre_lightning.errors import ConfigError, exit_on_user_error
from genre_lightning.model import TRAINING_DATA_KEY, GenreClassifier
from genre_lightning.results.hparams import log_hparams_with_metrics
from genre_lightning.runtime import (
    CONFIG_PATH,
    build_callbacks,
    build_loggers,
    images_skipped_during_run,
    show_and_save_config,
    to_python,
    write_json,
)
from genre_lightning.tracking import finish_run, log_config

log = logging.getLogger(__name__)


def split_file_for(ckpt_path: str | Path, split_file: str | None) -> str:
    """The split to evaluate on: ``split_file`` if given, else the checkpoint's own run's split."""
    choice = choose_split(split_file, checkpoint_split(ckpt_path))
    if choice.path is None:
        expected = Path(ckpt_path).resolve().parent.parent / ANNOTATIONS_FILE
        raise ConfigError(
            "data.split_file", None, f"an annotations.csv to evaluate on (none beside the checkpoint at {expected})"
        )
    return str(choice.path)


def training_augment(ckpt_path: str | Path, fallback: Any) -> Any:
    """The augmentation the checkpoint was trained with (its training-samples figure shows that):
    recorded in the data module's checkpoint state (or, before 0.2, under ``TRAINING_DATA_KEY``);
    ``fallback`` (``data.augment``) for a checkpoint that does not say."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)  # tensors stay on disk
    for recorded in (checkpoint.get(PosterDataModule.__qualname__), checkpoint.get(TRAINING_DATA_KEY)):
        if isinstance(recorded, dict) and "augment" in recorded:
            return recorded["augment"]
    log.info(
        "The checkpoint does not record its training augmentation (written by an older genre-train): "
        "the training-samples figure uses data.augment=%s",
        fallback,
    )
    return fallback


def eval_datamodule(cfg: DictConfig, model: GenreClassifier) -> PosterDataModule:
    """The data module for ``cfg.split`` of the checkpoint's split file, with its training transform."""
    split_file = split_file_for(cfg.ckpt_path, cfg.data.get("split_file"))
    datamodule = instantiate(
        cfg.data,
        classes=model.classes,
        split_file=split_file,
        test_split=cfg.split,
        augment=training_augment(cfg.ckpt_path, cfg.data.get("augment")),
        task=model.hparams.task,  # what the checkpoint was trained for, whatever data.task says
    )
    datamodule.set_data_config(model.data_config)
    return datamodule


@exit_on_user_error
def evaluate(cfg: DictConfig) -> dict:
    """Test ``cfg.ckpt_path`` and write ``metrics.json`` into the run folder."""
    output_dir = Path(cfg.paths.output_dir)
    show_and_save_config(cfg, output_dir, show=cfg.get("print_config", True))
    pl.seed_everything(cfg.seed, workers=True)
    model = GenreClassifier.from_checkpoint(cfg.ckpt_path)
    if cfg.get("tta_hflip") is not None:
        model.set_flip_tta(cfg.tta_hflip)
    if cfg.get("threshold") is not None:
        model.set_threshold(cfg.threshold)
    datamodule = eval_datamodule(cfg, model)
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=build_loggers(cfg), callbacks=build_callbacks(cfg))
    log_config(trainer.loggers, cfg)
    metrics = to_python(trainer.test(model, datamodule=datamodule)[0])
    results = {
        "test": metrics,
        "test_ckpt_path": str(Path(cfg.ckpt_path).resolve()),
        "split": cfg.split,
        "split_file": datamodule.split_file,
        "skipped_during_run": images_skipped_during_run(model.failed_items, datamodule),
    }
    log_hparams_with_metrics(trainer.loggers, cfg, metrics)
    write_json(output_dir / "metrics.json", results)
    finish_run(trainer.loggers, cfg, output_dir)
    log.info("Run folder: %s", output_dir)
    return results


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
