"""The out-of-fold estimate of a model trained on every fold, for its model card.

A ``data.fold=all`` refit, or a ``genre-ensemble`` of fold runs, has no poster left to validate on:
what it is worth is the cross-validation's out-of-fold estimate of its recipe, which genre-report
wrote into the sweep folder (``report.csv``, beside ``oof_predictions.csv``). That folder is the
one given as ``cv_report=`` to genre-export, else the first folder above the model's run folder
that holds a report (``<sweep>/final/refit`` finds ``<sweep>``).

The estimate belongs to the model when the report's fold runs share its fold assignment (the
``fold_digest``) and recipe: a fold ensemble's members are those fold runs; a refit's overrides
are its recipe's, less the settings the refit chose itself (epochs, temperature, probe C, seed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from genre_lightning.data.folds import ALL_FOLDS
from genre_lightning.inference.card_sections import CvEstimate, trained_on_every_fold
from genre_lightning.results.cv_report import OOF_FILE, REFIT_SETTINGS
from genre_lightning.results.recipes import NOT_RECIPE, Job, RecipeKeys, iter_jobs, name_recipes, read_overrides
from genre_lightning.results.sweep_report import SEED_KEYS
from genre_lightning.utils.errors import ConfigError

REPORT_FILE = "report.csv"
# Keys genre-report leaves out of a recipe's name by default (group_seeds=true).
IGNORED = frozenset({"data.fold", *NOT_RECIPE, *SEED_KEYS})


def find_report(run: Path, cv_report: str | Path | None = None) -> Path | None:
    """The cross-validation report folder: ``cv_report`` (a folder or its report.csv), else the first
    folder above ``run`` that holds ``report.csv`` and ``oof_predictions.csv``."""
    if cv_report:
        folder = Path(cv_report)
        folder = folder.parent if folder.name == REPORT_FILE else folder
        if not ((folder / REPORT_FILE).is_file() and (folder / OOF_FILE).is_file()):
            raise ConfigError(
                "cv_report",
                str(cv_report),
                f"a cross-validation sweep folder that genre-report wrote {REPORT_FILE} and {OOF_FILE} into "
                "(genre-report sweep_dir=<it>)",
            )
        return folder
    for folder in run.resolve().parents:
        if (folder / REPORT_FILE).is_file() and (folder / OOF_FILE).is_file():
            return folder
    return None


def cv_estimate(run: Path, metrics: Mapping[str, Any], cv_report: str | Path | None = None) -> CvEstimate | None:
    """The out-of-fold estimate of the model in ``run`` (None: it is not trained on every fold; a
    ``CvEstimate`` with a ``reason``: none was found, and why)."""
    if not trained_on_every_fold(metrics):
        return None
    folder = find_report(run, cv_report)
    if folder is None:
        return CvEstimate(reason=f"no genre-report output ({REPORT_FILE}) in a folder above {run}, and no cv_report=")
    digest = metrics["cross_validation"].get("fold_digest")
    jobs = [j for j in iter_jobs(folder) if j.metrics and j.fold is not None]
    table = pd.read_csv(folder / REPORT_FILE, keep_default_na=False)
    # genre-report names recipes after what differs between the jobs it saw: with the models trained
    # on every fold (a report run after them), else without (a report run before they existed).
    for named in (jobs, [j for j in jobs if j.fold != ALL_FOLDS]):
        name_recipes(named, RecipeKeys(IGNORED))
        folds = [j for j in named if j.fold != ALL_FOLDS and j.cross_validation.get("fold_digest") == digest]
        if not folds:
            return CvEstimate(reason=f"the fold runs under {folder} have another fold assignment than {digest}")
        recipes = sorted({j.recipe for j in _own_fold_runs(run, metrics, folds)})
        if len(recipes) == 1 and recipes[0] in set(table["recipe"]):
            return _estimate(folder, table, recipes[0], [j for j in folds if j.recipe == recipes[0]], metrics)
    if len(recipes) > 1:
        return CvEstimate(reason=f"several recipes in {folder} match this model: {', '.join(recipes)}")
    if not recipes:
        return CvEstimate(reason=f"no recipe of the cross-validation in {folder} has this model's overrides")
    return CvEstimate(reason=f"{folder / REPORT_FILE} has no row for `{recipes[0]}` (run genre-report again)")


def card_cv_estimate(ckpt_path: str | Path, cv_report: str | Path | None = None) -> CvEstimate | None:
    """:func:`cv_estimate` for a checkpoint in its run folder (genre-export format=card)."""
    run = Path(ckpt_path).resolve().parent.parent
    metrics_file = run / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return cv_estimate(run, metrics, cv_report)


def _own_fold_runs(run: Path, metrics: Mapping[str, Any], folds: Sequence[Job]) -> list[Job]:
    """The fold runs of the model's recipe: an ensemble's members, or those whose recipe overrides
    the refit has too (less what the refit chose itself)."""
    members = {Path(m).resolve().parent.parent for m in metrics.get("ensemble_members") or []}
    if members:
        return [j for j in folds if j.folder.resolve() in members]
    own = read_overrides(run) or {}
    own = {k.lstrip("+~"): v for k, v in own.items()}
    skipped = {*IGNORED, *REFIT_SETTINGS}
    return [
        j
        for j in folds
        if all(own.get(k.lstrip("+~")) == v for k, v in j.overrides.items() if k.lstrip("+~") not in skipped)
    ]


def _estimate(
    folder: Path, table: pd.DataFrame, recipe: str, fold_runs: Sequence[Job], metrics: Mapping[str, Any]
) -> CvEstimate:
    row = table[table["recipe"] == recipe].iloc[0]
    keys = [c for c in table.columns if c.split("_")[0] in ("top1", "top2", "f1", "ece") and "/" not in c]
    config = folder / fold_runs[0].name / "config.yaml"
    data = (yaml.safe_load(config.read_text()) or {}).get("data", {}) if config.is_file() else {}
    return CvEstimate(
        folds=int(metrics["cross_validation"]["folds"]),
        fold_digest=metrics["cross_validation"].get("fold_digest"),
        split_seed=data.get("split_seed"),
        recipe=recipe,
        runs=int(row["runs"]),
        posters=int(row["posters"]),
        metrics={k: float(row[k]) for k in keys if row[k] != ""},
        report=str(folder / REPORT_FILE),
        fold_runs=sorted({j.name for j in fold_runs}),
    )
