"""genre-report sweep_dir=<multirun folder>: one table of a sweep, grouped by overrides, mean ± std over seeds.

Reads every job's ``metrics.json`` and ``.hydra/overrides.yaml``; jobs whose overrides differ
only in ``seed`` form one group. Writes ``report.csv`` (every metric's mean and std) and
``report.md`` (the main metrics as ``mean ± std``) into the multirun folder, and prints the
Markdown table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from genre_lightning.utils.errors import ConfigError

SEED_KEYS = {"seed"}
# Shown in report.md (when present); report.csv has every metric.
MAIN_METRICS = ("test/acc", "test/f1_macro", "test/acc_top2", "test/ece", "test/map", "test/f1_micro", "val/acc_best")
LOWER_IS_BETTER = ("loss", "ece", "hamming")


def parse_override(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key, value


def is_seed(key: str) -> bool:
    return key.lstrip("+~") in SEED_KEYS


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
    rows, unfinished = [], []
    for overrides_file in sorted(folder.rglob(".hydra/overrides.yaml")):
        job = overrides_file.parent.parent
        # Plain YAML: the override strings as typed, never resolved (they may hold ${...} interpolations).
        overrides = dict(parse_override(str(o)) for o in yaml.safe_load(overrides_file.read_text()) or [])
        metrics_file = job / "metrics.json"
        if not metrics_file.is_file():
            unfinished.append(job)
            continue
        rows.append(job_row(str(job.relative_to(folder)), overrides, json.loads(metrics_file.read_text())))
    return pd.DataFrame(rows), unfinished


def job_row(job: str, overrides: dict[str, str], metrics: dict) -> dict:
    """One job of the table: its name, its overrides as ``override:<key>`` columns, its metrics."""
    return {"job": job, **{f"override:{k}": v for k, v in overrides.items()}, **job_metrics(metrics)}


def summarise(jobs: pd.DataFrame, metric: str, ascending: bool | None = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Mean and sample std (n-1) of every metric per group of overrides without the seed.

    Returns the table, sorted by ``<metric>_mean``, and the overrides every job shares.
    """
    override_columns = [c for c in jobs.columns if c.startswith("override:")]
    seed_columns = [c for c in override_columns if is_seed(c.removeprefix("override:"))]
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


def report(folder: str | Path, metric: str = "test/acc", ascending: bool | None = None) -> pd.DataFrame:
    """Write ``report.csv`` and ``report.md`` into ``folder``; print the Markdown; return the table."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(
            "sweep_dir", str(folder), "an existing Hydra multirun folder (outputs/train/multiruns/<time>)"
        )
    jobs, unfinished = collect_jobs(folder)
    if jobs.empty:
        raise ConfigError(
            "sweep_dir", str(folder), "a multirun folder whose jobs hold .hydra/overrides.yaml and metrics.json"
        )
    return write_report(jobs, unfinished, folder, metric, ascending)


def write_report(
    jobs: pd.DataFrame,
    unfinished: Sequence[Path],
    out_dir: Path,
    metric: str = "test/acc",
    ascending: bool | None = None,
) -> pd.DataFrame:
    """Summarise ``jobs`` (rows as :func:`collect_jobs` gives them, from folders or a tracking server)
    into ``out_dir/report.csv`` and ``report.md``; print the Markdown; return the table."""
    table, shared = summarise(jobs, metric, ascending)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "report.csv", index=False)
    markdown = to_markdown(table, metric, shared, unfinished)
    (out_dir / "report.md").write_text(markdown)
    print(markdown)
    print(f"Wrote {out_dir / 'report.csv'} and {out_dir / 'report.md'} ({len(jobs)} jobs, {len(table)} groups)")
    return table
