"""A search's settings, space and command line checked before anything trains: each mistake is one line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from genre_lightning.launch.search_space import SearchSpace, as_overrides, merged, parse_space
from genre_lightning.launch.sweep import SPLIT_KEYS
from genre_lightning.results.search_scores import OBJECTIVES
from genre_lightning.utils.errors import ConfigError

PRUNERS = ("paired", "none")


def check_search(config: DictConfig, s: Any, arguments: Sequence[str], config_loader: Any) -> SearchSpace:
    """The search's settings, space and command line, checked before anything trains (one-line errors)."""
    if s.metric not in OBJECTIVES:
        raise ConfigError("hydra.sweeper.metric", s.metric, f"one of {list(OBJECTIVES)}")
    if s.pruner not in PRUNERS and not hasattr(s.pruner, "prune"):
        raise ConfigError("hydra.sweeper.pruner", s.pruner, f"one of {list(PRUNERS)} or an Optuna pruner (_target_)")
    for key, value, valid in (("n_trials", s.n_trials, 1), ("n_jobs", s.n_jobs, 1), ("min_folds", s.min_folds, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < valid:
            raise ConfigError(f"hydra.sweeper.{key}", value, f"an integer of at least {valid}")
    if config.data.get("folds") is None:
        raise ConfigError(
            "data.folds", None, "an integer of at least 2: a search scores every trial out of fold (data.folds=5)"
        )
    if config.data.get("fold") is not None:
        raise ConfigError("data.fold", config.data.fold, "unset: the search runs every fold of each trial")
    if config.data.get("task", "single") != "single":
        raise ConfigError("data.task", config.data.task, "single: the search scores single-label recipes")
    swept = [a for a in arguments if "," in a.partition("=")[2] and not a.startswith("hydra.")]
    if any(_is_sweep(a) for a in swept):
        raise ConfigError("hydra.sweeper.params", swept[0], "the searched keys in hydra.sweeper.params, not a -m sweep")
    space = parse_space(s.params, s.conditional)
    for key in space.keys:
        if key == "data.fold" or any(key == f"data.{k}" or key.startswith(f"data.{k}.") for k in SPLIT_KEYS):
            raise ConfigError(
                f"hydra.sweeper.params.{key}",
                "(searched)",
                "a recipe setting: every trial is scored on one fold "
                "assignment, so the data and split settings stay as the command line sets them",
            )
    _check_keys_compose(config, config_loader, arguments, space)
    return space


def _check_keys_compose(config: DictConfig, config_loader: Any, arguments: Sequence[str], space: SearchSpace) -> None:
    """Compose one config per searched value that changes the config's shape (each choice), and one
    with every other key, so a key that no config has fails now, in one line."""
    base = [a for a in arguments if not a.startswith("hydra.")]
    conditions = {p.key: c for c, ps in space.conditional.items() for p in ps}
    for parameter in [*space.always, *(p for ps in space.conditional.values() for p in ps)]:
        dist = parameter.distribution
        values = list(getattr(dist, "choices", ())) or [parameter.fixed if dist is None else dist.low]
        for value in values:
            condition = [conditions[parameter.key]] if parameter.key in conditions else []
            overrides = merged(base, [*condition, *as_overrides({parameter.key: value})])
            try:
                config_loader.load_sweep_config(config, overrides)
            except Exception as error:
                reason = str(error).strip().splitlines()[0]
                raise ConfigError(
                    f"{parameter.declared_in}.{parameter.key}", value, f"a key or option the config has ({reason})"
                ) from None


def _is_sweep(argument: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(argument).is_sweep_override()
    except Exception:
        return False
