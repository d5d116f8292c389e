"""Recipes scored on the same posters, as one table: each metric with its 95% bootstrap interval, and
each recipe's paired difference to the best one (``results/bootstrap.py``, ``results/paired.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from genre_lightning.results.bootstrap import Scores, group_weights, metric_intervals
from genre_lightning.results.paired import compare

SHOWN = (("top1", "top-1"), ("top2", "top-2"), ("f1_macro", "macro-F1"), ("ece", "ECE"))


def recipe_table(
    scored: Mapping[str, Scores],
    posters: Sequence[str],
    groups: Mapping[str, str],
    classes: Sequence[str],
    samples: int,
    seed: int,
) -> pd.DataFrame:
    """One row per recipe, best top-1 first: estimate, low and high of every metric (``<metric>``,
    ``<metric>_low``, ``<metric>_high``), and against the best recipe: ``d_top1`` and ``d_f1_macro``
    with their intervals, ``mcnemar_p`` and ``verdict``. Every recipe must score ``posters`` (in that
    order); duplicate groups (``groups``, by file path) are resampled together."""
    weights = group_weights([groups.get(p, p) for p in posters], samples, seed)
    rows = []
    for recipe, scores in scored.items():
        row: dict[str, object] = {"recipe": recipe, "runs": scores.probabilities.shape[0], "posters": len(posters)}
        for name, value in metric_intervals(scores, weights, classes).items():
            row[name], row[f"{name}_low"], row[f"{name}_high"] = value.estimate, value.low, value.high
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("top1", ascending=False, kind="stable").reset_index(drop=True)
    best = table.loc[0, "recipe"]
    for i, recipe in enumerate(table["recipe"]):
        if recipe == best:
            continue
        comparison = compare(scored[recipe], scored[best], weights)
        for name in ("top1", "f1_macro"):
            value = getattr(comparison, name)
            table.loc[i, [f"d_{name}", f"d_{name}_low", f"d_{name}_high"]] = [value.estimate, value.low, value.high]
        table.loc[i, ["mcnemar_p", "only_this_right", "only_best_right"]] = [
            comparison.p_value,
            comparison.only_model_right,
            comparison.only_reference_right,
        ]
        table.loc[i, "verdict"] = comparison.verdict
    return table


def interval_text(row: pd.Series, name: str, scale: float = 100.0, digits: int = 1) -> str:
    if name not in row or pd.isna(row[name]):
        return "—"
    low, high = row[f"{name}_low"] * scale, row[f"{name}_high"] * scale
    return f"{row[name] * scale:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def recipe_markdown(table: pd.DataFrame, extra: Mapping[str, Sequence[str]] | None = None) -> str:
    """The table as Markdown: metrics in percent (ECE as a fraction), paired differences in points.
    ``extra``: more columns, one value per row (e.g. wall time)."""
    extra = dict(extra or {})
    header = [
        "recipe",
        "runs",
        *(label for _, label in SHOWN),
        "Δ top-1 vs best",
        "McNemar p",
        "Δ macro-F1",
        "",
        *extra,
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, row in table.iterrows():
        cells = [f"`{row['recipe']}`", str(row["runs"])]
        cells += [interval_text(row, name, 1.0, 3) if name == "ece" else interval_text(row, name) for name, _ in SHOWN]
        if i == 0:
            cells += ["best", "", "", ""]
        else:
            p = row.get("mcnemar_p")
            cells += [
                interval_text(row, "d_top1"),
                "—" if pd.isna(p) else f"{p:.2g}",
                interval_text(row, "d_f1_macro"),
                str(row.get("verdict", "")),
            ]
        cells += [str(values[i]) for values in extra.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def genre_f1_markdown(table: pd.DataFrame, classes: Sequence[str]) -> str:
    """Each recipe's per-genre F1 with intervals."""
    header = ["recipe", *(f"F1 {c}" for c in classes)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        lines.append(
            "| " + " | ".join([f"`{row['recipe']}`", *(interval_text(row, f"f1/{c}") for c in classes)]) + " |"
        )
    return "\n".join(lines) + "\n"


def median(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None
