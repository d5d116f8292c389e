"""The runs of a sweep folder as recipes, and a recipe's per-poster predictions.

A job is a run folder with ``.hydra/overrides.yaml`` (``genre-train`` or ``genre-ensemble``), anywhere
under the folder given to ``genre-report`` (one multirun, or a folder holding several). Jobs whose
overrides differ only in the keys that do not define a recipe (``seed``; ``data.fold`` for the folds
of a cross-validation) are one recipe. A ``genre-ensemble`` job's recipe is the ensemble of its
members' recipes (read from the members' run folders), so per-fold ensembles group like the folds of
any recipe.

A recipe's predictions of one set of posters become :class:`~genre_lightning.results.bootstrap.Scores`
(the posters in one order, one block of probabilities per run).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from genre_lightning.results.bootstrap import Scores
from genre_lightning.utils.csvio import read_csv
from genre_lightning.utils.errors import ConfigError

PREDICTIONS_FILE = "test_predictions.csv"
SEED_KEY = "seed"
FOLD_KEY = "data.fold"
ENSEMBLE_KEY = "ckpt_paths"
# Settings that change how a run goes, not what it learns: never part of a recipe's name (a stored
# feature is the feature it would compute; workers load the same images).
NOT_RECIPE = ("print_config", "callbacks.feature_cache.cache_dir", "data.num_workers", "data.persistent_workers")


@dataclass
class Job:
    """One run folder: its name (relative to the report folder), overrides and ``metrics.json`` (None:
    failed or unfinished)."""

    name: str
    folder: Path
    overrides: dict[str, str]
    metrics: dict[str, Any] | None
    recipe: str = ""
    seed: str = "(default)"

    @property
    def cross_validation(self) -> dict[str, Any] | None:
        return (self.metrics or {}).get("cross_validation")

    @property
    def fold(self) -> str | None:
        """``"0"``..``"K-1"`` for a fold run, ``"all"`` for a refit or a fold ensemble, None outside a CV."""
        cv = self.cross_validation
        return None if cv is None or cv.get("fold") is None else str(cv["fold"])

    @property
    def predictions_path(self) -> Path:
        return self.folder / PREDICTIONS_FILE


def parse_override(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key, value


def override(overrides: dict[str, str], key: str) -> str | None:
    """The value of ``key`` in ``overrides``, also when it was typed ``+key=`` or ``++key=``."""
    return next((v for k, v in overrides.items() if k.lstrip("+~") == key), None)


def read_overrides(folder: Path) -> dict[str, str] | None:
    """A run folder's command-line overrides as typed (plain YAML: never resolved), or None."""
    path = folder / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    return dict(parse_override(str(o)) for o in yaml.safe_load(path.read_text()) or [])


def iter_jobs(folder: Path) -> Iterator[Job]:
    """Every run folder under ``folder``, in name order. Links to folders are followed, so a folder of
    links to sweeps reports them together."""
    for job in sorted(_run_folders(folder)):
        yield read_job(job, str(job.relative_to(folder)))


def read_job(folder: Path, name: str | None = None) -> Job:
    """One run folder as a Job (``name``: the folder's own name unless given); metrics None without
    ``metrics.json``."""
    metrics_file = folder / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    return Job(name or folder.name, folder, read_overrides(folder) or {}, metrics)


def groups_of_split(folder: Path) -> dict[str, str]:
    """file path -> duplicate group, from ``folder/annotations.csv`` (empty without one, or without groups)."""
    path = folder / "annotations.csv"
    if not path.is_file():
        return {}
    frame = read_csv(path)
    return dict(zip(frame["file_path"], frame["group"], strict=True)) if "group" in frame.columns else {}


def _run_folders(folder: Path) -> Iterator[Path]:
    seen: set[str] = set()
    for path, names, _ in os.walk(folder, followlinks=True):
        real = os.path.realpath(path)
        if real in seen:  # a link back up the tree
            names.clear()
            continue
        seen.add(real)
        if (Path(path) / ".hydra" / "overrides.yaml").is_file():
            yield Path(path)


@dataclass
class RecipeKeys:
    """Which override keys name a recipe: all but ``ignored`` (the seed, unless seeds are compared,
    the fold, and ``NOT_RECIPE``)."""

    ignored: frozenset[str] = field(default_factory=lambda: frozenset({SEED_KEY, FOLD_KEY, *NOT_RECIPE}))

    def defining(self, overrides: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in sorted(overrides.items()) if k.lstrip("+~") not in self.ignored}


def name_recipes(jobs: Sequence[Job], keys: RecipeKeys) -> dict[str, str]:
    """Give each job its ``recipe`` (the overrides that differ between recipes, ``k=v`` joined by spaces;
    ensembles: ``ensemble(<member recipe> + ...)``) and ``seed``; return the overrides every plain
    job shares (listed once under the tables)."""
    own = {id(job): keys.defining(job.overrides) for job in jobs if ENSEMBLE_KEY not in job.overrides}
    shared = _shared(list(own.values()))
    for job in jobs:
        job.seed = override(job.overrides, SEED_KEY) or "(default)"
        if ENSEMBLE_KEY in job.overrides:
            counts = Counter(_member_recipe(p, keys, shared) for p in _members(job))
            parts = [f"{n} x {recipe}" if n > 1 else recipe for recipe, n in counts.items()]
            job.recipe = "ensemble(" + " + ".join(parts) + ")"
        else:
            job.recipe = _label(own[id(job)], shared)
    return shared


def _shared(overrides: Sequence[dict[str, str]]) -> dict[str, str]:
    if not overrides:
        return {}
    first = overrides[0]
    every = set.intersection(*(set(o) for o in overrides))
    return {k: first[k] for k in sorted(every) if all(o[k] == first[k] for o in overrides)}


def _label(overrides: dict[str, str], shared: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in overrides.items() if k not in shared) or "(shared overrides only)"


def _members(job: Job) -> list[str]:
    """The checkpoints of a genre-ensemble job (from its metrics.json, else its overrides)."""
    members = (job.metrics or {}).get("ensemble_members")
    if members:
        return list(members)
    text = job.overrides[ENSEMBLE_KEY].strip("[]")
    return [p.strip().strip("'\"") for p in text.split(",") if p.strip()]


def _member_recipe(checkpoint: str, keys: RecipeKeys, shared: dict[str, str]) -> str:
    overrides = read_overrides(Path(checkpoint).parent.parent)
    return checkpoint if overrides is None else _label(keys.defining(overrides), shared)


def read_predictions(job: Job) -> pd.DataFrame:
    """A job's ``test_predictions.csv``, or a one-line error saying how to get one."""
    if not job.predictions_path.is_file():
        raise ConfigError(
            "sweep_dir",
            str(job.folder.parent),
            f"runs with test_predictions.csv (job {job.name} has none: run with test=true and artifacts=default)",
        )
    return read_csv(job.predictions_path)


def scores(frames: Sequence[pd.DataFrame], classes: Sequence[str], posters: Sequence[str]) -> Scores:
    """``frames`` (one per run, each with one row per poster) as Scores over ``posters`` in that order."""
    index = {c: i for i, c in enumerate(classes)}
    probabilities, labels = [], None
    for frame in frames:
        frame = frame.set_index("file_path").loc[list(posters)]
        probabilities.append(frame[[f"p_{c}" for c in classes]].astype(float).to_numpy())
        run_labels = np.array([index[label] for label in frame["label"]])
        if labels is not None and not np.array_equal(labels, run_labels):
            raise ConfigError("sweep_dir", "", "runs that agree on every poster's genre")
        labels = run_labels
    return Scores(labels, np.stack(probabilities))


def classes_of(frame: pd.DataFrame) -> list[str]:
    """The genres of a predictions table, in its column order."""
    return [c.removeprefix("p_") for c in frame.columns if c.startswith("p_") and c != "p_top1"]


def duplicate_groups(jobs: Sequence[Job]) -> dict[str, str]:
    """file path -> duplicate group, from the jobs' ``annotations.csv`` (a poster without one is its own group)."""
    groups: dict[str, str] = {}
    for job in jobs:
        groups.update(groups_of_split(job.folder))
    return groups
