"""What every entry point does around its task: find the configs, show and save the composed
config, build callbacks and loggers from their config groups, and write JSON results."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import rich
import rich.syntax
import rich.tree
from hydra.utils import instantiate
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# conf/ sits beside the package in the source tree (the project is installed editable).
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


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


def instantiate_all(group: Mapping[str, Any] | None) -> list[Any]:
    """Instantiate each entry of a config group that holds several objects (callbacks, loggers)."""
    return [instantiate(entry) for entry in (group or {}).values() if entry and "_target_" in entry]


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    callbacks = instantiate_all(cfg.get("callbacks"))
    finetune = cfg.get("finetune")
    if finetune and "_target_" in finetune:
        # First, so a param group it adds at an epoch start is already there when LearningRateMonitor logs.
        callbacks.insert(0, instantiate(finetune))
    artifacts = cfg.get("artifacts")
    if artifacts and "_target_" in artifacts:
        callbacks.append(instantiate(artifacts))
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Logger]:
    return instantiate_all(cfg.get("logger"))


@rank_zero_only
def write_json(path: str | Path, payload: Mapping[str, Any]) -> None:
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True))


def to_python(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Tensor metric values to floats."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
