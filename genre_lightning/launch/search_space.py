"""A search space written as Hydra sweep overrides, asked of an Optuna trial.

``hydra.sweeper.params`` maps a config key (or a config group, such as ``experiment``) to an
expression in Hydra's override grammar, the one ``-m`` sweeps already use:

* ``choice(probe_cpu, best_cpu)``: a categorical choice (config group options, numbers, strings);
* ``interval(0.0, 0.2)``: a float range; ``tag(log, interval(1e-5, 1e-3))`` on a log scale;
  ``int(interval(2, 8))`` an integer range;
* ``range(2, 10, 2)``: integers (stop excluded, as Python's range);
* a plain value: fixed for every trial.

``hydra.sweeper.conditional`` maps ``key=value`` (a choice above) to more parameters that only exist
when that choice is made, e.g. a learning rate for the recipes that fine-tune and none for a linear
probe, whose head is fitted in closed form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from omegaconf import DictConfig, ListConfig, OmegaConf

from genre_lightning.utils.errors import ConfigError

SWEEPER = "hydra.sweeper"


@dataclass(frozen=True)
class Parameter:
    """One searched key: its Optuna distribution (None: a fixed value) and where it was declared."""

    key: str
    distribution: Any
    fixed: Any = None
    declared_in: str = f"{SWEEPER}.params"

    def suggest(self, trial: Any) -> Any:
        import optuna.distributions as d

        dist = self.distribution
        if dist is None:
            return self.fixed
        if isinstance(dist, d.CategoricalDistribution):
            return trial.suggest_categorical(self.key, dist.choices)
        if isinstance(dist, d.IntDistribution):
            return trial.suggest_int(self.key, dist.low, dist.high, step=dist.step, log=dist.log)
        return trial.suggest_float(self.key, dist.low, dist.high, step=dist.step, log=dist.log)


@dataclass(frozen=True)
class SearchSpace:
    """Unconditional parameters, and those that exist under a ``key=value`` choice."""

    always: tuple[Parameter, ...]
    conditional: dict[str, tuple[Parameter, ...]]

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.always] + [p.key for ps in self.conditional.values() for p in ps]

    def ask(self, trial: Any) -> dict[str, Any]:
        """This trial's values, conditional ones included where their condition holds."""
        values = {p.key: p.suggest(trial) for p in self.always}
        for condition, parameters in self.conditional.items():
            key, _, value = condition.partition("=")
            if str(values.get(key)) == value:
                values.update({p.key: p.suggest(trial) for p in parameters})
        return values

    def describe(self) -> dict[str, str]:
        """A plain record of the space (a study keeps it, to refuse a different search in its storage)."""
        return {
            (f"{c}: " if c else "") + p.key: repr(p.distribution) if p.distribution is not None else repr(p.fixed)
            for c, ps in [("", self.always), *self.conditional.items()]
            for p in ps
        }


def parse_space(params: Mapping[str, Any] | None, conditional: Mapping[str, Any] | None) -> SearchSpace:
    """The space from the sweeper's ``params`` and ``conditional`` settings (one-line errors)."""
    always = tuple(_parameter(k, v, f"{SWEEPER}.params") for k, v in _flat(params or {}).items())
    if not always and not conditional:
        raise ConfigError(
            f"{SWEEPER}.params", "{}", "at least one key to search, e.g. 'model.label_smoothing: interval(0, 0.2)'"
        )
    choices = {p.key: p for p in always}
    branches: dict[str, tuple[Parameter, ...]] = {}
    for condition, inner in (conditional or {}).items():
        key, equals, value = str(condition).partition("=")
        known = choices.get(key)
        options = [str(c) for c in getattr(known.distribution, "choices", ())] if known else []
        if not equals or value not in options:
            valid = [f"{k}={c}" for k, p in choices.items() for c in getattr(p.distribution, "choices", ())]
            raise ConfigError(f"{SWEEPER}.conditional", condition, f"key=value of a choice in params: one of {valid}")
        branches[str(condition)] = tuple(
            _parameter(k, v, f"{SWEEPER}.conditional.{condition}") for k, v in _flat(inner or {}).items()
        )
    keys = [p.key for p in always] + [p.key for ps in branches.values() for p in ps]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ConfigError(f"{SWEEPER}.conditional", repeated[0], "a key searched in one place only")
    return SearchSpace(always, branches)


def _flat(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"optimizer": {"lr": ...}}}`` (what ``hydra.sweeper.params.model.optimizer.lr=...`` on
    the command line makes) as ``{"model.optimizer.lr": ...}``, the form the presets write."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _parameter(key: str, expression: Any, where: str) -> Parameter:
    import optuna.distributions as d  # the search's own dependency (pip install "genre-lightning[optuna]")

    text = f"{key}={expression}"
    try:
        override = OverridesParser.create().parse_override(text)
    except Exception as error:  # Hydra's grammar error names the offending token
        raise ConfigError(f"{where}.{key}", expression, f"a Hydra sweep expression ({error})") from None
    value = override.value()
    if isinstance(value, ChoiceSweep):
        # Optuna's choices are plain values: a list or mapping is kept as its override text.
        choices = [c if isinstance(c, bool | int | float | str) or c is None else _text(c) for c in value.list]
        return Parameter(key, d.CategoricalDistribution(choices), declared_in=where)
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step or 1
        if any(isinstance(x, float) and not float(x).is_integer() for x in (start, stop, step)):
            return Parameter(key, d.FloatDistribution(start, stop - step, step=step), declared_in=where)
        return Parameter(key, d.IntDistribution(int(start), int(stop - step), step=int(step)), declared_in=where)
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if "int" in value.tags or (isinstance(value.start, int) and isinstance(value.end, int)):
            return Parameter(key, d.IntDistribution(int(value.start), int(value.end), log=log), declared_in=where)
        return Parameter(key, d.FloatDistribution(float(value.start), float(value.end), log=log), declared_in=where)
    if override.is_sweep_override():
        raise ConfigError(f"{where}.{key}", expression, "choice(...), interval(...), range(...) or a plain value")
    return Parameter(key, None, fixed=override.get_value_element_as_str(), declared_in=where)


def as_overrides(values: Mapping[str, Any]) -> list[str]:
    """Hydra overrides for a trial's values (config group choices are overrides like any other)."""
    return [f"{key}={_text(value)}" for key, value in values.items()]


def is_the_recipe_of(overrides: Sequence[str], config: DictConfig) -> bool:
    """Whether a trial's values are those ``config`` (the command line's recipe) already has: such a
    trial would only run ``baseline/`` again."""
    choices = config.hydra.runtime.choices  # a config group's key holds the option chosen
    for override in overrides:
        key, _, text = override.partition("=")
        value = yaml.safe_load(text)
        if key in choices:
            if str(choices[key]) != str(value):
                return False
            continue
        try:
            current = OmegaConf.select(config, key, throw_on_missing=True)
            if isinstance(current, DictConfig | ListConfig):
                current = OmegaConf.to_container(current, resolve=True)
        except Exception:  # noqa: BLE001 - a key it cannot resolve here is not known to be the same
            return False
        if current != value:
            return False
    return True


def merged(base: list[str], extra: list[str]) -> list[str]:
    """``base`` overrides with those of ``extra`` replacing any of the same key (a trial's value wins over
    the command line's)."""
    keys = {o.partition("=")[0].lstrip("+~") for o in extra}
    return [o for o in base if o.partition("=")[0].lstrip("+~") not in keys] + list(extra)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_text(v)}" for k, v in value.items()) + "}"
    return str(value)
