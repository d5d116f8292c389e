"""Would averaging the probabilities of several fine-tuned runs beat the best single run?
Reads the per-image prediction CSVs that ``genre-eval split=val`` writes, one per run, and prints
the validation accuracy of each run, of every pair, and of all runs together.

    for run in v03_best_cpu v12_mobilenetv2; do
        genre-eval ckpt_path=outputs/accuracy/$run/checkpoints/last.ckpt split=val \\
            hydra.run.dir=outputs/ensemble/$run
    done
    python bench/ensemble_val.py outputs/ensemble/*/test_predictions.csv

Use ``split=val`` (never test) to choose; every CSV must come from the same split file.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import pandas as pd


def load_probabilities(csv_paths: list[Path]) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """Each run's (images x genres) probabilities, the true labels and the genre names."""
    frames = {path.parent.name: pd.read_csv(path) for path in csv_paths}
    first = next(iter(frames.values()))
    genres = [column.removeprefix("p_") for column in first.columns if column.startswith("p_") and column != "p_top1"]
    for name, frame in frames.items():
        if not frame["file_path"].equals(first["file_path"]):
            raise SystemExit(f"{name}: its images differ from the first CSV's; evaluate every run on one split")
    probabilities = {name: frame[[f"p_{g}" for g in genres]].to_numpy() for name, frame in frames.items()}
    labels = first["label"].map(genres.index).to_numpy()
    return probabilities, labels, genres


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((probabilities.argmax(axis=1) == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="+", type=Path, help="test_predictions.csv of genre-eval split=val runs")
    args = parser.parse_args()
    probabilities, labels, _ = load_probabilities(args.csv)
    rows = [(name, accuracy(p, labels)) for name, p in probabilities.items()]
    for a, b in itertools.combinations(probabilities, 2):
        rows.append((f"{a} + {b}", accuracy(probabilities[a] + probabilities[b], labels)))
    if len(probabilities) > 2:
        rows.append((f"all {len(probabilities)}", accuracy(sum(probabilities.values()), labels)))
    width = max(len(name) for name, _ in rows)
    print(f"{'runs (probabilities averaged)':<{width}}  val acc  ({len(labels)} images)")
    for name, value in rows:
        print(f"{name:<{width}}  {100 * value:5.1f}")


if __name__ == "__main__":
    main()
