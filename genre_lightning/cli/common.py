"""What every entry point does around its task: find the configs, show and save the composed
config, build callbacks and loggers from their config groups, and write JSON results."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import rich
import rich.syntax
import rich.tree
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from genre_lightning.cli.config_path import CONFIG_MODULE, CONFIG_PATH  # noqa: F401 (the commands import them from here)

log = logging.getLogger(__name__)


@rank_zero_only
def show_and_save_config(cfg: DictConfig, output_dir: str | Path, show: bool = True) -> None:
    """Print the composed config as a tree and write it, resolved, to ``<run>/config.yaml``."""
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "config.yaml").write_text(resolved)
    if not show:
        return
    tree = rich.tree.Tree("config", style="bold")
    for key, value in cfg.items():
        branch = tree.add(str(key), style="bold cyan")
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else repr(value)
        branch.add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark"))
    rich.print(tree)


def compose_config(config_name: str, overrides: Sequence[str], output_dir: str | Path) -> DictConfig:
    """Compose a config as the command line does, for use in Python (tests, benchmarks), with
    the run folder set to ``output_dir``."""
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.root_dir = str(output_dir)
        cfg.paths.output_dir = str(output_dir)
    return cfg


def instantiate_all(group: Mapping[str, Any] | None) -> list[Any]:
    """Instantiate each entry of a config group that holds several objects (callbacks, loggers);
    an entry whose factory returns None (e.g. the progress bar when it is switched off) is left out."""
    built = [instantiate(entry) for entry in (group or {}).values() if entry and "_target_" in entry]
    return [obj for obj in built if obj is not None]


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    """The progress display first, then the fine-tuning callback: at each epoch start the progress
    display writes the finished epoch's line before anything of the new epoch is logged, then the
    fine-tuning callback decides what trains, and the callbacks after it (the feature cache,
    LearningRateMonitor for a new param group) see that."""
    group = cfg.get("callbacks")
    if group is not None and isinstance(group.get("progress"), str):  # callbacks.progress=lines
        with open_dict(group):
            enabled = cfg.get("trainer", {}).get("enable_progress_bar", True)
            target = "genre_lightning.training.epoch_progress.progress_bar"
            group.progress = {"_target_": target, "mode": group.progress, "enabled": enabled}
    others = instantiate_all(group)
    callbacks = [c for c in others if isinstance(c, ProgressBar)]
    finetune = cfg.get("finetune")
    if finetune and "_target_" in finetune:
        callbacks.append(instantiate(finetune))
    callbacks += [c for c in others if not isinstance(c, ProgressBar)]
    artifacts = cfg.get("artifacts")
    if artifacts and "_target_" in artifacts:
        callbacks.append(instantiate(artifacts))
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Logger]:
    return instantiate_all(cfg.get("logger"))


@rank_zero_only
def write_json(path: str | Path, payload: Mapping[str, Any]) -> None:
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True))
