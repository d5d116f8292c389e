"""What a model gets wrong most: the confused genre pairs ranked by count, and the hardest posters
(highest loss), from a predictions table (a run's ``test_predictions.csv``, a recipe's out-of-fold
predictions). Single-label: ``label`` against ``top1``; the loss is ``-log p(filed genre)``.
Multi-label tables (``labels``) have their co-occurrence matrix instead: no pairs, no grid."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from genre_lightning.results import figures
from genre_lightning.results.thumbnails import short_name, thumbnail

PAIRS_FILE = "confused_pairs.csv"
HARDEST_FIGURE = "hardest.png"
EPSILON = 1e-12  # a probability of 0 is a loss of 27.6, not infinity


def confused_pairs(frame: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """``true, predicted, count, share_of_true`` (of the posters filed under ``true``) for every pair the
    model confused at least once, most often first (ties: true genre, then predicted genre, in ``classes`` order)."""
    order = {c: i for i, c in enumerate(classes)}
    wrong = frame[frame["label"] != frame["top1"]]
    table = wrong.groupby(["label", "top1"]).size().rename("count").reset_index()
    table = table.rename(columns={"label": "true", "top1": "predicted"})
    if table.empty:  # nothing confused (an empty frame's columns would not be numbers)
        return pd.DataFrame({"true": [], "predicted": [], "count": pd.Series([], dtype=int), "share_of_true": []})
    filed = table["true"].map(frame["label"].value_counts()).to_numpy(float)
    table["share_of_true"] = table["count"].to_numpy(float) / filed

    def by_class_order(column: pd.Series) -> pd.Series:
        return column if column.name == "count" else column.map(order)

    table = table.sort_values(["count", "true", "predicted"], ascending=[False, True, True], key=by_class_order)
    return table.reset_index(drop=True)


def pairs_markdown(table: pd.DataFrame, top: int = 10) -> str:
    """The ``top`` most confused pairs as a Markdown table."""
    if table.empty:
        return "No poster was confused.\n"
    lines = ["| filed genre | predicted genre | posters | share of the filed genre |", "|---|---|---|---|"]
    for row in table.head(top).itertuples():
        lines.append(f"| {row.true} | {row.predicted} | {row.count} | {100 * row.share_of_true:.1f}% |")
    return "\n".join(lines) + "\n"


def hardest(frame: pd.DataFrame, limit: int) -> pd.DataFrame:
    """The ``limit`` posters with the highest loss, ``-log p(filed genre)``, highest first (as column ``loss``)."""
    p_filed = frame.apply(lambda row: float(row[f"p_{row['label']}"]), axis=1)
    ranked = frame.assign(loss=-np.log(np.clip(p_filed.to_numpy(float), EPSILON, 1.0)))
    return ranked.sort_values("loss", ascending=False, kind="stable").head(limit)


def hardest_figure(frame: pd.DataFrame, limit: int, columns: int, title: str) -> Figure:
    """A grid of the hardest posters, each captioned with its filed and predicted genre and its loss."""
    shown = hardest(frame, limit)
    images = [thumbnail(p) for p in shown["file_path"]]
    captions = [
        f"Filed: {r.label} /\nPred: {r.top1} (loss {r.loss:.2f})\n{short_name(r.file_path)}" for r in shown.itertuples()
    ]
    return figures.image_grid(images, captions, title, columns=columns, caption_color="#b00020")
