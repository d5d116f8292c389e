"""``hydra/sweeper=cv_search``: Optuna's ask/tell on the out-of-fold metric of each trial's fold runs."""

from __future__ import annotations

from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class CrossValidatedSearch(Sweeper):
    """Settings: conf/hydra/sweeper/cv_search.yaml; the work: genre_lightning.launch.search."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from genre_lightning.launch.search import Search, SearchSettings
        from genre_lightning.utils.errors import exit_on_user_error

        search = Search(self.config, self.launcher, self.hydra_context.config_loader, SearchSettings(**self.settings))
        return exit_on_user_error(search.run)(arguments)
