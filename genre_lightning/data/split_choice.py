"""Which split a run uses: decided here, and only here, for every entry point.

In this order, the first that applies wins:

1. ``data.split_file``, when given: that file, exactly;
2. a run resumed from ``ckpt_path`` (genre-train), or a checkpoint being evaluated or exported
   (genre-eval, genre-export): the ``annotations.csv`` of the run the checkpoint belongs to;
3. a multirun job whose split settings are the sweep's: the sweep's shared split
   (``launch/sweep.py`` makes it before the jobs start);
4. the run folder's own ``annotations.csv`` (a requeued Slurm job, a rerun with ``hydra.run.dir``);
5. a new split, made from ``data.root`` or ``data.annotations``.

``choose_split`` is pure; the entry points pass what they know (the data module passes only 1
and its run folder, for 4 and 5), and ``prepare_annotations`` carries the choice out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from genre_lightning.utils.errors import ConfigError

ANNOTATIONS_FILE = "annotations.csv"
SOURCES = ("split_file", "checkpoint", "sweep", "run_folder", "new")


@dataclass(frozen=True)
class SplitChoice:
    """Where the split comes from (one of ``SOURCES``) and the file to reuse (None: make a new one)."""

    source: str
    path: Path | None


def checkpoint_split(ckpt_path: str | Path | None) -> Path | None:
    """The ``annotations.csv`` beside the run folder of ``ckpt_path`` (``<run>/checkpoints/x.ckpt``)."""
    if not ckpt_path:
        return None
    checkpoint = Path(ckpt_path)
    if not checkpoint.is_file():
        raise ConfigError("ckpt_path", str(ckpt_path), "an existing checkpoint file")
    sibling = checkpoint.resolve().parent.parent / ANNOTATIONS_FILE
    return sibling if sibling.is_file() else None


def choose_split(
    split_file: str | Path | None = None,
    checkpoint: Path | None = None,
    sweep: Path | None = None,
    run_folder: str | Path | None = None,
) -> SplitChoice:
    """The split a run uses, by the order in the module docstring."""
    own = Path(run_folder).resolve() / ANNOTATIONS_FILE if run_folder is not None else None
    if split_file:
        return SplitChoice("split_file", Path(split_file))
    if checkpoint is not None and checkpoint.resolve() != own:
        return SplitChoice("checkpoint", checkpoint)
    if sweep is not None:
        return SplitChoice("sweep", sweep)
    if own is not None and own.is_file():
        return SplitChoice("run_folder", own)
    return SplitChoice("new", None)


def evaluation_split(ckpt_path: str | Path, split_file: str | Path | None) -> Path:
    """The split to evaluate a checkpoint on: ``split_file`` if given, else its own run's split."""
    choice = choose_split(split_file, checkpoint_split(ckpt_path))
    if choice.path is None:
        expected = Path(ckpt_path).resolve().parent.parent / ANNOTATIONS_FILE
        raise ConfigError(
            "data.split_file", None, f"an annotations.csv to evaluate on (none beside the checkpoint at {expected})"
        )
    return choice.path
