"""Label issues: the posters whose filed genre the out-of-fold model doubts, found by cleanlab.

Out-of-fold probabilities come from models that never trained on the poster they score, which is what
confident learning needs. Single-label: ``cleanlab.filter.find_label_issues`` (the posters whose filed
genre the confident joint says is likely wrong) ranked by ``cleanlab.rank.get_label_quality_scores``
(self-confidence: the out-of-fold probability of the filed genre; low = doubtful). Multi-label: the
same through ``cleanlab.multilabel_classification``. The table, ``label_issues.csv``, is a
``data.label_fixes`` file as it is (``action`` is ``exclude`` on every row, ``genre`` the suggested
genre for an edit to ``relabel``: ``data/label_fixes.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from genre_lightning.results import figures
from genre_lightning.results.thumbnails import short_name, thumbnail

ISSUES_FILE = "label_issues.csv"
ISSUES_FIGURE = "label_issues.png"
COLUMNS = [
    "rank",
    "file_path",
    "filed",
    "suggested",
    "score",
    "p_filed",
    "p_suggested",
    "group",
    "group_genres",
    "fold",
    "action",
    "genre",
]


def find_issues(frame: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """The label issues of ``frame`` (one row per poster: ``file_path``, ``label`` or ``labels``,
    ``p_<genre>``, ``group``, ``fold``), most doubtful first, as ``COLUMNS``."""
    probabilities = frame[[f"p_{c}" for c in classes]].to_numpy(float)
    if "labels" in frame.columns and "label" not in frame.columns:
        issues, quality, filed, suggested, p_filed, p_suggested = _multilabel(frame, probabilities, classes)
    else:
        issues, quality, filed, suggested, p_filed, p_suggested = _single_label(frame, probabilities, classes)
    genres_of_group = frame.groupby("group")[filed.name].agg(lambda s: "|".join(sorted(set("|".join(s).split("|")))))
    table = pd.DataFrame(
        {
            "file_path": frame["file_path"],
            "filed": filed,
            "suggested": suggested,
            "score": quality,
            "p_filed": p_filed,
            "p_suggested": p_suggested,
            "group": frame["group"],
            "group_genres": frame["group"].map(genres_of_group),
            "fold": frame.get("fold", ""),
            "action": "exclude",
            "genre": suggested,
        }
    ).iloc[issues]
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table[COLUMNS].reset_index(drop=True)


def _single_label(frame: pd.DataFrame, probabilities: np.ndarray, classes: Sequence[str]) -> tuple:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)  # calibrated, up to rounding
    labels = frame["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    issues = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(labels, probabilities)
    best = probabilities.argmax(axis=1)
    rows = np.arange(len(labels))
    suggested = pd.Series([classes[i] for i in best], index=frame.index)
    return issues, quality, frame["label"], suggested, probabilities[rows, labels], probabilities[rows, best]


def _multilabel(frame: pd.DataFrame, probabilities: np.ndarray, classes: Sequence[str]) -> tuple:
    from cleanlab.multilabel_classification.filter import find_label_issues
    from cleanlab.multilabel_classification.rank import get_label_quality_scores

    index = {c: i for i, c in enumerate(classes)}
    labels = [[index[g] for g in genres.split("|")] for genres in frame["labels"]]
    issues = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(labels, probabilities)
    above = probabilities >= 0.5  # no single threshold per genre survives averaging runs: the plain 0.5
    above[np.arange(len(above)), probabilities.argmax(axis=1)] = True  # at least the top genre
    suggested = pd.Series(["|".join(c for c, on in zip(classes, row, strict=True) if on) for row in above])
    suggested.index = frame.index
    p_filed = [min(probabilities[i, j] for j in genres) for i, genres in enumerate(labels)]
    p_suggested = [probabilities[i, row].min() for i, row in enumerate(above)]
    return issues, quality, frame["labels"], suggested, np.array(p_filed), np.array(p_suggested)


def issues_figure(table: pd.DataFrame, limit: int, columns: int, title: str) -> Figure:
    """The ``limit`` most doubtful posters, each captioned with its filed and its suggested genre."""
    shown = table.head(limit)
    images = [thumbnail(p) for p in shown["file_path"]]
    captions = [
        f"Filed: {r.filed} /\nSuggested: {r.suggested} ({r.p_suggested:.2f})\n{short_name(r.file_path)}"
        for r in shown.itertuples()
    ]
    return figures.image_grid(images, captions, title, columns=columns, caption_color="#b00020")
