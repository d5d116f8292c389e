"""Out-of-fold log-loss of each recipe of a genre-report, with its interval and its paired difference
to a reference recipe (genre-report's tables give top-1, top-2, macro-F1 and ECE; the search ranks by
log-loss): the same bootstrap over duplicate groups, on the same posters.

    genre-report sweep_dir=<folder of CV sweeps> [incomplete=common]
    python bench/oof_logloss.py <folder of CV sweeps> --reference <recipe or a part of its name>
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from genre_lightning.results.bootstrap import Scores, accuracy, group_weights, interval
from genre_lightning.results.recipes import groups_of_split
from genre_lightning.results.search_scores import log_loss
from genre_lightning.utils.csvio import read_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the folder genre-report wrote oof_predictions.csv into")
    parser.add_argument("--reference", required=True)
    args = parser.parse_args()
    frame = read_csv(args.folder / "oof_predictions.csv")
    classes = [c[2:] for c in frame.columns if c.startswith("p_") and c != "p_top1"]
    groups: dict[str, str] = {}
    for split in args.folder.rglob("annotations.csv"):
        groups.update(groups_of_split(split.parent))
    recipes = {name: part.sort_values("file_path") for name, part in frame.groupby("recipe")}
    posters = next(iter(recipes.values()))["file_path"].tolist()
    weights = group_weights([groups.get(p, p) for p in posters])
    once = np.ones((1, len(posters)))

    def scores(part) -> Scores:
        assert part["file_path"].tolist() == posters, "every recipe must predict the same posters"
        labels = part["label"].map(classes.index).to_numpy()
        return Scores(labels, part[[f"p_{c}" for c in classes]].to_numpy(float)[None])

    (reference,) = [name for name in recipes if args.reference in name]
    base = scores(recipes[reference])
    print(f"{len(posters)} posters; reference: {reference}")
    print("| recipe | top-1 | log-loss | Δ log-loss vs reference (paired) |\n|---|---|---|---|")
    for name, part in recipes.items():
        mine = scores(part)
        top1 = interval(accuracy(mine, once)[0] * 100, accuracy(mine, weights) * 100)
        loss = interval(log_loss(mine, once)[0], log_loss(mine, weights))
        delta = interval(
            log_loss(mine, once)[0] - log_loss(base, once)[0], log_loss(mine, weights) - log_loss(base, weights)
        )
        text = "reference" if name == reference else f"{delta.estimate:+.3f} [{delta.low:+.3f}, {delta.high:+.3f}]"
        print(
            f"| {name} | {top1.estimate:.1f} [{top1.low:.1f}, {top1.high:.1f}] "
            f"| {loss.estimate:.3f} [{loss.low:.3f}, {loss.high:.3f}] | {text} |"
        )


if __name__ == "__main__":
    main()
