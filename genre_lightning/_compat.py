"""Old import paths, kept working for one release (0.3) with a ``FutureWarning``.

Configs saved by earlier versions (a run folder's ``config.yaml``, users' own experiment files) name
classes by their old module paths, e.g. ``genre_lightning.model.GenreClassifier`` or
``genre_lightning.finetune.GradualUnfreeze``. An import finder installed by ``genre_lightning``
answers those paths with the modules where the code lives now (``MOVED``), and says so once.
``genre_lightning.model`` is ``_legacy_model``: the model with its old prediction methods, which now
live in ``genre_lightning.inference.Predictor``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from typing import Any

REMOVED_IN = "0.4"

# Old module path -> new module path.
MOVED = {
    "genre_lightning.model": "genre_lightning._legacy_model",
    "genre_lightning.backbone": "genre_lightning.models.backbone",
    "genre_lightning.ensemble": "genre_lightning.cli.ensemble",
    "genre_lightning.layer_sync": "genre_lightning.training.layer_sync",
    "genre_lightning.metrics": "genre_lightning.training.metrics",
    "genre_lightning.multilabel": "genre_lightning.training.tasks",
    "genre_lightning.finetune": "genre_lightning.training.finetune",
    "genre_lightning.probe": "genre_lightning.training.probe",
    "genre_lightning.feature_cache": "genre_lightning.training.feature_cache",
    "genre_lightning.schedulers": "genre_lightning.training.schedulers",
    "genre_lightning.epoch_lines": "genre_lightning.training.epoch_progress",
    "genre_lightning.memory": "genre_lightning.training.release_memory",
    "genre_lightning.tracking": "genre_lightning.results.tracking",
    "genre_lightning.results.callback": "genre_lightning.results.run_artifacts",
    "genre_lightning.results.tracked_sweep": "genre_lightning.results.mlflow_sweep",
    "genre_lightning.errors": "genre_lightning.utils.errors",
    "genre_lightning.plain": "genre_lightning.utils.plain_values",
    "genre_lightning.csvio": "genre_lightning.utils.csvio",
    "genre_lightning.progress": "genre_lightning.utils.progress",
    "genre_lightning.distributed": "genre_lightning.utils.distributed",
    "genre_lightning.runtime": "genre_lightning.cli.common",
    "genre_lightning.train": "genre_lightning.cli.train",
    "genre_lightning.evaluate": "genre_lightning.cli.evaluation",
    "genre_lightning.predict": "genre_lightning.cli.predict",
    "genre_lightning.prepare": "genre_lightning.cli.prepare_data",
    "genre_lightning.report": "genre_lightning.cli.report",
    "genre_lightning.export": "genre_lightning.cli.export",
    "genre_lightning.data.split": "genre_lightning.data.stratify",
    "genre_lightning.data.split_source": "genre_lightning.data.split_choice",
    "genre_lightning.data.cache": "genre_lightning.data.image_cache",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the module that now holds its code."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None) -> Any:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> Any:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; the old path works until genre-lightning {REMOVED_IN} "
            "(a run's config.yaml or your own config names it: change its _target_)",
            FutureWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)

    def exec_module(self, module: Any) -> None:  # the module is already executed
        return None


def install() -> None:
    """Answer the old module paths (once per interpreter)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
