"""Per-genre recall and precision of two recipes of one cross-validation, out of fold and paired.

    genre-report sweep_dir=<sweep>          # writes <sweep>/oof_predictions.csv
    python scripts/paired_recall.py <sweep> 'model.class_weights=null' 'model.class_weights=auto'

genre-report compares recipes by top-1 and macro-F1; class weights trade precision for recall in
the rare genres, which this shows: each metric of both recipes on every poster (out of fold), with
95% bootstrap intervals resampling posters by duplicate group, and the paired difference (both
recipes resampled with the same draw: ``results/bootstrap.py``). Prints a Markdown table.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from genre_lightning.results.bootstrap import Interval, Scores, accuracy, group_weights, interval, macro_f1
from genre_lightning.utils.csvio import read_csv

Metric = Callable[[Scores, np.ndarray], np.ndarray]


def share(scores: Scores, weights: np.ndarray, genre: int, of_truth: bool) -> np.ndarray:
    """Recall (``of_truth``: hits among the genre's posters) or precision (hits among its predictions)."""
    truth, chosen = scores.labels == genre, scores.predicted[0] == genre
    base = truth if of_truth else chosen
    return (weights @ (truth & chosen)) / np.maximum(weights @ base, 1e-12)


def metrics(classes: list[str]) -> dict[str, Metric]:
    table: dict[str, Metric] = {"macro-F1": macro_f1, "top-1": accuracy}
    for kind, of_truth in (("recall", True), ("precision", False)):
        for i, genre in enumerate(classes):
            table[f"{kind} {genre}"] = lambda s, w, i=i, t=of_truth: share(s, w, i, t)
    return table


def percent(value: Interval, sign: str = "") -> str:
    return f"{100 * value.estimate:{sign}.1f} [{100 * value.low:{sign}.1f}, {100 * value.high:{sign}.1f}]"


def main(sweep: Path, reference: str, model: str) -> None:
    oof = read_csv(sweep / "oof_predictions.csv")
    classes = [c.removeprefix("p_") for c in oof.columns if c.startswith("p_") and c != "p_top1"]
    posters = sorted(set(oof["file_path"]))
    frames = {r: oof[oof["recipe"] == r].set_index("file_path").loc[posters] for r in (reference, model)}
    labels = np.array([classes.index(label) for label in frames[reference]["label"]])
    split = read_csv(sweep / "annotations.csv")
    group_of = dict(zip(split["file_path"], split["group"], strict=True)) if "group" in split else {}
    weights = group_weights([group_of.get(p, p) for p in posters])
    once = np.ones((1, len(posters)))
    scores = {
        r: Scores(labels, f[[f"p_{c}" for c in classes]].astype(float).to_numpy()[None]) for r, f in frames.items()
    }
    counts = ", ".join(f"{c} {int((labels == i).sum())}" for i, c in enumerate(classes))
    print(f"{len(posters)} posters out of fold ({counts})\n")
    print(f"| metric | `{reference}` | `{model}` | difference (paired) |\n|---|---|---|---|")
    for name, metric in metrics(classes).items():
        a, b = scores[reference], scores[model]
        cells = [interval(metric(s, once)[0], metric(s, weights)) for s in (a, b)]
        delta = interval(metric(b, once)[0] - metric(a, once)[0], metric(b, weights) - metric(a, weights))
        print(f"| {name} | {percent(cells[0])} | {percent(cells[1])} | {percent(delta, '+')} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
