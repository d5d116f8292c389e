"""Predictions as a table (``predictions.csv``, ``test_predictions.csv``) and as console lines."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from genre_lightning.utils.csvio import TEXT


def probability_frame(
    paths: Sequence[str],
    probabilities: torch.Tensor,
    classes: Sequence[str],
    errors: Sequence[str] | None = None,
    decisions: torch.Tensor | None = None,
) -> pd.DataFrame:
    """``file_path, top1, p_top1, p_<class>...`` (and ``error`` when ``errors`` is given).

    With ``decisions`` (a multi-label model's boolean (N, C) predicted genres: ``task.decisions``),
    ``predicted`` lists each row's genres joined by ``|`` ("" when none is). Rows whose probabilities
    are NaN (an image that could not be read) get an empty ``top1``.
    """
    probabilities = probabilities.float().cpu()
    readable = ~probabilities.isnan().any(dim=1)
    best = probabilities.nan_to_num(-1).argmax(dim=1)
    frame = pd.DataFrame({"file_path": pd.Series(list(paths), dtype=TEXT)})
    frame["top1"] = [classes[i] if ok else "" for i, ok in zip(best.tolist(), readable.tolist(), strict=True)]
    frame["p_top1"] = probabilities.max(dim=1).values.numpy()
    if decisions is not None:
        frame.insert(1, "predicted", genre_sets(decisions.cpu() & readable[:, None], classes))
    for column, name in enumerate(classes):
        frame[f"p_{name}"] = probabilities[:, column].numpy()
    if errors is not None:
        frame["error"] = pd.Series(list(errors), dtype=TEXT)
    return frame


def genre_sets(chosen: torch.Tensor, classes: Sequence[str]) -> list[str]:
    """Each row of a boolean (N, C) as its genres joined by ``|``."""
    return ["|".join(c for c, on in zip(classes, row, strict=True) if on) for row in chosen.tolist()]


def format_top_k(row: pd.Series, classes: Sequence[str], k: int) -> str:
    """One image's ``top_k`` genres with their probabilities, as genre-predict prints them."""
    if row["error"]:
        return f"{row['file_path']}: cannot predict ({row['error']})"
    ranked = sorted(classes, key=lambda c: -row[f"p_{c}"])[:k]
    lines = [row["file_path"]] + [f"  {i + 1}. {c:<10} {row[f'p_{c}']:.3f}" for i, c in enumerate(ranked)]
    if "predicted" in row:  # multi-label: every genre above its threshold
        lines.append(f"  genres: {row['predicted'].replace('|', ', ') or '(none above its threshold)'}")
    return "\n".join(lines)
