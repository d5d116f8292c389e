"""A Hydra callback every command runs: a wrong launcher setting fails at once, in one line.

In a module of its own, without Lightning: Hydra imports each callback's module at every start,
and ``genre-predict`` would otherwise pay Lightning's import (seconds) for a check that only acts
on a multirun."""

from __future__ import annotations

from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from genre_lightning.utils.errors import exit_on_user_error


class CheckLauncher(HydraCallback):
    """Resolve the launcher config before anything starts, so a bad value is one line, not a trace."""

    @exit_on_user_error
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns an exception in a callback into a warning; a ConfigError here exits (status 2).
        HydraConfig.instance().set_config(config)  # paths in the launcher config use ${hydra:runtime.cwd}
        OmegaConf.to_container(config.hydra.launcher, resolve=True)
