"""genre-report's data-quality section of a cross-validation: for one recipe's out-of-fold predictions
(its seeds' probabilities averaged), the most confused genre pairs, the hardest posters and the label
issues (``results/confusions.py``, ``results/label_issues.py``).

The recipe is the best of the report (the first row of its table) unless ``label_issues_recipe`` names
another. ``genre-report oof_csv=<oof_predictions.csv>`` runs the same on a bare out-of-fold table (the
best recipe there: the highest mean top-1 over its seeds).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from genre_lightning.results import figures
from genre_lightning.results.confusions import (
    HARDEST_FIGURE,
    PAIRS_FILE,
    confused_pairs,
    hardest_figure,
    pairs_markdown,
)
from genre_lightning.results.label_issues import ISSUES_FIGURE, ISSUES_FILE, find_issues, issues_figure
from genre_lightning.results.recipes import classes_of
from genre_lightning.utils.csvio import read_csv, write_csv
from genre_lightning.utils.errors import ConfigError

SHOWN = 24  # posters in each grid
COLUMNS = 6
LISTED = 10  # rows of each table in the Markdown


def recipe_predictions(oof: pd.DataFrame, recipe: str, groups: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per poster of ``recipe`` (its seeds' probabilities averaged, ``top1`` of the mean), with its
    duplicate ``group`` (from ``groups``, else an existing ``group`` column, else its own)."""
    rows = oof[oof["recipe"] == recipe]
    classes = classes_of(rows)
    probabilities = [f"p_{c}" for c in classes]
    rows = rows.astype({c: float for c in probabilities})
    truth = [c for c in ("label", "labels", "fold", "group") if c in rows.columns]
    frame = rows.drop_duplicates("file_path").set_index("file_path")[truth]
    frame = frame.join(rows.groupby("file_path")[probabilities].mean()).reset_index()
    frame["top1"] = [classes[i] for i in frame[probabilities].to_numpy(float).argmax(axis=1)]
    if groups:
        frame["group"] = frame["file_path"].map(groups)
    if "group" not in frame.columns:
        frame["group"] = ""
    own = frame["group"].isna() | (frame["group"].astype(str) == "")
    frame.loc[own, "group"] = "own:" + frame.loc[own, "file_path"]  # a poster without a group is its own
    return frame


def chosen_recipe(oof: pd.DataFrame, ranked: Sequence[str] | None, wanted: str | None) -> tuple[str, str]:
    """The recipe to examine and how it was chosen: ``wanted``, else the first of ``ranked`` (the report's
    order), else the one with the highest mean top-1 out of fold."""
    recipes = sorted(set(oof["recipe"]))
    if wanted is not None:
        if wanted not in recipes:
            raise ConfigError("label_issues_recipe", wanted, f"null (the best recipe) or one of {recipes}")
        return wanted, "chosen with label_issues_recipe"
    if len(recipes) == 1:
        return recipes[0], "the only recipe"
    if ranked is None:
        return best_by_accuracy(oof)[0], "the highest mean top-1 out of fold"
    return ranked[0], "the best recipe of this report"


def best_by_accuracy(oof: pd.DataFrame) -> list[str]:
    """Recipes by mean top-1 accuracy over their seeds, best first (multi-label: the top genre is a filed one)."""
    truth = oof["label"] if "label" in oof.columns else oof["labels"]
    right = [t in str(genres).split("|") for t, genres in zip(oof["top1"], truth, strict=True)]
    accuracy = oof.assign(right=right).groupby(["recipe", "seed"])["right"].mean().groupby("recipe").mean()
    return list(accuracy.sort_values(ascending=False, kind="stable").index)


def data_quality_section(
    oof: pd.DataFrame,
    folder: Path,
    ranked: Sequence[str] | None,
    recipe: str | None = None,
    label_issues: bool = True,
    groups: dict[str, str] | None = None,
) -> str:
    """Write ``confused_pairs.csv``, ``hardest.png``, ``label_issues.csv`` and ``label_issues.png`` into
    ``folder``; return the Markdown that shows them."""
    name, why = chosen_recipe(oof, ranked, recipe)
    frame = recipe_predictions(oof, name, groups)
    classes = classes_of(frame)
    seeds = oof.loc[oof["recipe"] == name, "seed"].nunique() if "seed" in oof.columns else 1
    lines = [
        f"\n## Data quality, out of fold: `{name}` ({why}; {len(frame)} posters"
        + (f", {seeds} seeds' probabilities averaged" if seeds > 1 else "")
        + ")\n"
    ]
    if "label" in frame.columns:
        pairs = confused_pairs(frame, classes)
        write_csv(pairs, folder / PAIRS_FILE)
        title = f"Hardest posters out of fold: the {SHOWN} with the highest loss, -log p(filed genre)"
        figures.save_png(hardest_figure(frame, SHOWN, COLUMNS, title), folder / HARDEST_FIGURE)
        lines += [
            f"Most confused genre pairs ({int(pairs['count'].sum()) if len(pairs) else 0} posters wrong; all "
            f"pairs in {PAIRS_FILE}):\n",
            pairs_markdown(pairs, LISTED),
            f"The {SHOWN} posters with the highest out-of-fold loss: {HARDEST_FIGURE}.\n",
        ]
    if label_issues:
        lines.append(_issues_markdown(frame, classes, folder))
    return "\n".join(lines)


def _issues_markdown(frame: pd.DataFrame, classes: Sequence[str], folder: Path) -> str:
    issues = find_issues(frame, classes)
    write_csv(issues, folder / ISSUES_FILE)
    title = f"Label issues (cleanlab, out of fold): {min(SHOWN, len(issues))} of {len(issues)} most doubtful"
    figures.save_png(issues_figure(issues, SHOWN, COLUMNS, title), folder / ISSUES_FIGURE)
    several = issues["group_genres"].str.contains("|", regex=False)
    lines = [
        f"Label issues (cleanlab's confident learning on the out-of-fold probabilities): {len(issues)} of "
        f"{len(frame)} posters ({100 * len(issues) / max(1, len(frame)):.1f}%) whose filed genre the model doubts, "
        f"{int(several.sum())} of them in a duplicate group filed under several genres; ranked in {ISSUES_FILE} "
        f"(score: cleanlab's label quality, low = doubtful), the first {SHOWN} in {ISSUES_FIGURE}.\n",
    ]
    if len(issues):
        lines.append("| rank | poster | filed | suggested | score | genres of its group |\n|---|---|---|---|---|---|")
        for row in issues.head(LISTED).itertuples():
            lines.append(
                f"| {row.rank} | {Path(row.file_path).name} | {row.filed} | {row.suggested} | {row.score:.3f} "
                f"| {row.group_genres} |"
            )
        lines.append(
            f"\n{ISSUES_FILE} is a label-fixes file: `genre-train ... data.label_fixes={folder / ISSUES_FILE}` "
            "trains without these posters (excluded from training only: every fold is still scored on its "
            "posters as filed; data.label_fixes_scope=all also drops them from the test folds). Edit its action "
            "column to `relabel` to train them under the suggested genre instead (docs/data-quality.md)."
        )
    return "\n".join(lines) + "\n"


def groups_beside(csv_path: Path) -> dict[str, str]:
    """The duplicate groups of the ``annotations.csv`` beside an out-of-fold table (a sweep folder's), if any."""
    path = csv_path.parent / "annotations.csv"
    if not path.is_file():
        return {}
    frame = read_csv(path)
    return dict(zip(frame["file_path"], frame["group"], strict=True)) if "group" in frame.columns else {}


def report_oof(csv_path: str | Path, recipe: str | None = None) -> str:
    """``genre-report oof_csv=<oof_predictions.csv>``: the data-quality section of a bare out-of-fold table,
    written beside it (``data_quality.md`` and the files of :func:`data_quality_section`)."""
    path = Path(csv_path)
    if not path.is_file():
        raise ConfigError("oof_csv", str(path), "an oof_predictions.csv written by genre-report on a cross-validation")
    oof = read_csv(path)
    missing = {"file_path", "top1"} - set(oof.columns)
    if missing or not ({"label", "labels"} & set(oof.columns)) or not classes_of(oof):
        raise ConfigError("oof_csv", str(path), "a table with file_path, label (or labels), top1 and p_<genre> columns")
    if "recipe" not in oof.columns:
        oof = oof.assign(recipe="(the table's)", seed="(default)")
    if "seed" not in oof.columns:
        oof["seed"] = "(default)"
    markdown = data_quality_section(oof, path.parent, None, recipe, groups=groups_beside(path))
    (path.parent / "data_quality.md").write_text(markdown)
    return markdown
