"""genre-report sweep_dir=<multirun folder>: one table of a sweep, grouped by overrides, mean ± std over seeds.

Reads every job's ``metrics.json`` and ``.hydra/overrides.yaml`` (every run folder under the folder);
jobs whose overrides differ only in ``seed`` form one group (``group_seeds=false``: each seed its own).
Writes ``report.csv`` (every metric's mean and std) and ``report.md`` (the main metrics as
``mean ± std``, then each recipe against the best one on the same test posters: a paired bootstrap
interval and McNemar's p, from the jobs' ``test_predictions.csv``) into the folder, and prints the
Markdown. A cross-validation sweep (``data.folds``) is reported out of fold instead
(``results/cv_report.py``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from genre_lightning.results.bootstrap import SAMPLES
from genre_lightning.results.cv_report import OOF_FILE, cv_sections
from genre_lightning.results.data_quality import data_quality_section
from genre_lightning.results.recipe_tables import recipe_markdown, recipe_table
from genre_lightning.results.recipes import (
    FOLD_KEY,
    NOT_RECIPE,
    SEED_KEY,
    Job,
    RecipeKeys,
    classes_of,
    duplicate_groups,
    iter_jobs,
    name_recipes,
    parse_override,
    read_predictions,
    scores,
)
from genre_lightning.results.search_report import is_search, report_search
from genre_lightning.utils.csvio import read_csv
from genre_lightning.utils.errors import ConfigError

SEED_KEYS = {SEED_KEY}
__all__ = ["collect_jobs", "job_row", "parse_override", "report", "summarise", "to_markdown", "write_report"]
# Shown in report.md (when present); report.csv has every metric.
MAIN_METRICS = ("test/acc", "test/f1_macro", "test/acc_top2", "test/ece", "test/map", "test/f1_micro", "val/acc_best")
LOWER_IS_BETTER = ("loss", "ece", "hamming")


def is_seed(key: str, seed_keys: Sequence[str] = tuple(SEED_KEYS)) -> bool:
    return key.lstrip("+~") in seed_keys


def job_metrics(metrics: dict) -> dict[str, float]:
    """The numbers of one job: its test metrics, and the best validation score as ``<name>_best``."""
    values = {k: v for k, v in (metrics.get("test") or {}).items() if isinstance(v, int | float)}
    for name, value in (metrics.get("best_val") or {}).items():
        if isinstance(value, int | float):
            values[f"{name}_best"] = value
    return values


def collect_jobs(folder: Path) -> tuple[pd.DataFrame, list[Path]]:
    """One row per finished job (overrides as ``override:<key>`` columns, then metrics), and the
    job folders that have overrides but no ``metrics.json`` (failed or still running)."""
    return job_table(list(iter_jobs(folder)))


def job_table(jobs: Sequence[Job]) -> tuple[pd.DataFrame, list[Path]]:
    rows = [job_row(job.name, job.overrides, job.metrics) for job in jobs if job.metrics is not None]
    return pd.DataFrame(rows), [job.folder for job in jobs if job.metrics is None]


def job_row(job: str, overrides: dict[str, str], metrics: dict) -> dict:
    """One job of the table: its name, its overrides as ``override:<key>`` columns, its metrics."""
    return {"job": job, **{f"override:{k}": v for k, v in overrides.items()}, **job_metrics(metrics)}


def summarise(
    jobs: pd.DataFrame, metric: str, ascending: bool | None = None, group_seeds: bool = True
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Mean and sample std (n-1) of every metric per group of overrides without the seed (with
    ``group_seeds=False``, each seed is a group of its own).

    Returns the table, sorted by ``<metric>_mean``, and the overrides every job shares.
    """
    override_columns = [c for c in jobs.columns if c.startswith("override:")]
    seed_keys = tuple(SEED_KEYS) if group_seeds else ()
    seed_columns = [c for c in override_columns if is_seed(c.removeprefix("override:"), seed_keys)]
    group_columns = [c for c in override_columns if c not in seed_columns]
    metric_columns = [c for c in jobs.columns if c != "job" and c not in override_columns]
    if metric not in metric_columns:
        raise ConfigError("metric", metric, f"one of {sorted(metric_columns)}")
    jobs = jobs.copy()
    jobs[override_columns] = jobs[override_columns].fillna("(default)")
    shared = {c.removeprefix("override:"): jobs[c].iloc[0] for c in group_columns if jobs[c].nunique() == 1}
    varying = [c for c in group_columns if jobs[c].nunique() > 1]
    seeds = jobs[seed_columns[0]] if seed_columns else pd.Series("(default)", index=jobs.index)
    keys = varying or [pd.Series("all jobs", index=jobs.index, name="group")]
    grouped = jobs.assign(seed=seeds).groupby(keys, sort=False, dropna=False)

    table = grouped[metric_columns].agg(["mean", "std", "count"])  # count: jobs with a value (not NaN)
    table.columns = [f"{name}_{stat}" for name, stat in table.columns]
    table.insert(0, "seeds", grouped["seed"].agg(lambda s: ",".join(map(str, s))))
    table.insert(0, "n", grouped.size())
    table = table.reset_index()
    table.columns = [c.removeprefix("override:") for c in table.columns]
    if ascending is None:
        ascending = any(word in metric for word in LOWER_IS_BETTER)
    table = table.sort_values(f"{metric}_mean", ascending=ascending, kind="stable").reset_index(drop=True)
    return table, shared


def to_markdown(table: pd.DataFrame, metric: str, shared: dict[str, str], unfinished: Sequence[Path]) -> str:
    """The groups as a Markdown table of ``mean ± std`` (the sort metric first), with notes below."""
    override_names = [
        c for c in table.columns if c not in ("n", "seeds") and not c.endswith(("_mean", "_std", "_count"))
    ]
    shown = [metric] + [m for m in MAIN_METRICS if m != metric and f"{m}_mean" in table.columns]
    header = [*override_names, "n", "seeds", *shown]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [str(row[name]) for name in [*override_names, "n", "seeds"]]
        for name in shown:
            mean, std = row[f"{name}_mean"], row[f"{name}_std"]
            cell = f"{mean:.4f} ± {std:.4f}" if pd.notna(std) else f"{mean:.4f}"
            # A job whose value is NaN (e.g. a diverged run) is left out of the mean: say so.
            count = row[f"{name}_count"]
            cells.append(cell if count == row["n"] else f"{cell} (of {count} jobs)")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"Sorted by {metric}; mean over seeds ± sample standard deviation (n-1; none for a single seed)."]
    if shared:
        notes.append("Overrides shared by every job: " + " ".join(f"`{k}={v}`" for k, v in shared.items()))
    if unfinished:
        notes.append("Jobs without metrics.json (failed or unfinished): " + ", ".join(p.name for p in unfinished))
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def report(
    folder: str | Path,
    metric: str = "test/acc",
    ascending: bool | None = None,
    group_seeds: bool = True,
    samples: int = SAMPLES,
    seed: int = 0,
    incomplete: str = "fail",
    label_issues: bool | None = None,
    label_issues_recipe: str | None = None,
    compare_with: Sequence[str | Path] = (),
) -> pd.DataFrame:
    """Write ``report.csv`` and ``report.md`` into ``folder``; print the Markdown; return the table.
    ``samples`` and ``seed``: the bootstrap of the intervals; ``incomplete``: what a
    cross-validation's runs with missing folds do (``fail``, ``skip``, ``common``: ``cv_report.fold_runs``).
    A cross-validation also gets its data-quality section (``results/data_quality.py``): ``label_issues``
    (None: on for a cross-validation; True on any other sweep is an error) and the recipe it examines.
    ``compare_with``: runs that join a search's confirmation on its fixed test part (a search folder only)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(
            "sweep_dir", str(folder), "an existing Hydra multirun folder (outputs/train/multiruns/<time>)"
        )
    if is_search(folder):  # a cross-validated search's folder (launch/search.py)
        return report_search(folder, samples, seed, compare_with)
    if compare_with:
        raise ConfigError(
            "compare_with", str(compare_with[0]), "empty unless sweep_dir is a search folder (its confirmation)"
        )
    jobs = list(iter_jobs(folder))
    if not any(job.metrics is not None for job in jobs):
        raise ConfigError(
            "sweep_dir", str(folder), "a multirun folder whose jobs hold .hydra/overrides.yaml and metrics.json"
        )
    ignored = {FOLD_KEY, *NOT_RECIPE, *(SEED_KEYS if group_seeds else ())}
    shared = name_recipes(jobs, RecipeKeys(frozenset(ignored)))
    if any(job.fold is not None for job in jobs):
        quality = {"label_issues": label_issues is not False, "recipe": label_issues_recipe}
        return _cross_validation_report(jobs, folder, shared, samples, seed, incomplete, quality)
    if label_issues:
        raise ConfigError(
            "label_issues",
            True,
            "false for a sweep that is not a cross-validation (label issues need out-of-fold predictions: "
            "genre-train -m data.folds=5 data.fold=0,1,2,3,4 ..., then genre-report on that folder)",
        )
    table, unfinished = job_table(jobs)
    paired = _paired_on_the_test_split([j for j in jobs if j.metrics is not None], folder, samples, seed)
    return write_report(table, unfinished, folder, metric, ascending, group_seeds, paired)


def write_report(
    jobs: pd.DataFrame,
    unfinished: Sequence[Path],
    out_dir: Path,
    metric: str = "test/acc",
    ascending: bool | None = None,
    group_seeds: bool = True,
    extra_markdown: str = "",
) -> pd.DataFrame:
    """Summarise ``jobs`` (rows as :func:`collect_jobs` gives them, from folders or a tracking server)
    into ``out_dir/report.csv`` and ``report.md`` (with ``extra_markdown`` below the table); print the
    Markdown; return the table."""
    table, shared = summarise(jobs, metric, ascending, group_seeds)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "report.csv", index=False)
    markdown = to_markdown(table, metric, shared, unfinished) + extra_markdown
    (out_dir / "report.md").write_text(markdown)
    print(markdown)
    print(f"Wrote {out_dir / 'report.csv'} and {out_dir / 'report.md'} ({len(jobs)} jobs, {len(table)} groups)")
    return table


def _paired_on_the_test_split(jobs: Sequence[Job], folder: Path, samples: int, seed: int) -> str:
    """Each recipe against the best one on the test posters they share (seeds: one run each of a recipe)."""
    recipes = defaultdict(list)
    for job in jobs:
        recipes[job.recipe].append(job)
    if len(recipes) < 2:
        return ""
    if not all(job.predictions_path.is_file() for job in jobs):
        return "\nPaired comparisons need every job's test_predictions.csv (artifacts=default, test=true).\n"
    frames = {recipe: [read_predictions(job) for job in members] for recipe, members in recipes.items()}
    posters = sorted(next(iter(frames.values()))[0]["file_path"])
    if any(sorted(f["file_path"]) != posters for fs in frames.values() for f in fs):
        return (
            "\nNo paired comparison: the jobs were tested on different posters "
            "(one data.split_file makes them comparable).\n"
        )
    classes = classes_of(next(iter(frames.values()))[0])
    scored = {recipe: scores(fs, classes, posters) for recipe, fs in frames.items()}
    table = recipe_table(scored, posters, duplicate_groups(jobs), classes, samples, seed)
    table.to_csv(folder / "paired.csv", index=False)
    return (
        f"\n## Paired on the {len(posters)} test posters\n\n"
        + recipe_markdown(table)
        + f"\n95% bootstrap intervals over duplicate groups ({samples} samples); Δ: paired difference to the best "
        "recipe (runs of a recipe: its seeds, averaged), McNemar's exact p (several seeds: the sign test of each "
        "poster's mean correctness); an interval that contains 0 is not distinguishable.\n"
    )


def _cross_validation_report(
    jobs: Sequence[Job],
    folder: Path,
    shared: dict[str, str],
    samples: int,
    seed: int,
    incomplete: str,
    quality: dict | None = None,
) -> pd.DataFrame:
    markdown, table = cv_sections(jobs, folder, samples, seed, incomplete)
    if quality is not None and not table.empty and (folder / OOF_FILE).is_file():
        oof = read_csv(folder / OOF_FILE)
        fold_jobs = [job for job in jobs if job.metrics is not None]
        ranked = list(table["recipe"]) if "top1" in table.columns else None  # multi-label: no scored table
        markdown += data_quality_section(
            oof, folder, ranked, quality["recipe"], quality["label_issues"], duplicate_groups(fold_jobs)
        )
    if shared:
        markdown += "\nOverrides shared by every recipe: " + " ".join(f"`{k}={v}`" for k, v in shared.items()) + "\n"
    unfinished = [job.name for job in jobs if job.metrics is None]
    if unfinished:
        markdown += "\nJobs without metrics.json (failed or unfinished): " + ", ".join(unfinished) + "\n"
    table.to_csv(folder / "report.csv", index=False)
    (folder / "report.md").write_text(markdown)
    print(markdown)
    print(f"Wrote {folder / 'report.csv'}, {folder / 'report.md'} and {folder / 'oof_predictions.csv'}")
    return table
