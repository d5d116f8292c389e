"""Batch prediction: many image files through a ``Predictor``, streamed.

What genre-predict runs on a folder, and what ``Predictor.predict`` runs on file paths: the files
are read lazily (a folder is walked once, by ``ImageFiles``), decoded by a pool of threads a few
batches ahead of the model (``decode.py``), and each batch becomes rows of the prediction table
(``prediction_table.probability_frame``) as soon as the model has run on it. ``predict_to_csv``
appends those rows to ``predictions.csv`` as they come and can resume a stopped run
(``prediction_csv.py``), so memory stays bounded whatever the number of files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import pandas as pd
import torch

from genre_lightning.data.scan import IMAGE_EXTENSIONS, walk_files
from genre_lightning.inference.decode import DatasetOf, decoded_batches, image_files
from genre_lightning.inference.prediction_csv import PredictionCsv
from genre_lightning.inference.prediction_table import probability_frame
from genre_lightning.models.prediction_task import PredictionTask
from genre_lightning.utils.errors import ConfigError
from genre_lightning.utils.progress import Progress

log = logging.getLogger(__name__)


class Predictor(Protocol):
    """What batch prediction needs of a model (``inference.predictor.Predictor`` has it)."""

    classes: list[str]
    task: PredictionTask
    eval_transform: Callable
    min_image_side: int | None

    def probabilities(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode_workers(self) -> int: ...


class ImageFiles:
    """The image files under a folder (sorted, sub-folders included), or one image file, listed
    lazily as they are read: a folder is walked once, and ``others`` counts the files passed over
    because their extension is not an image's."""

    def __init__(self, path: str | Path, key: str = "input") -> None:
        self.path = Path(path)
        if not (self.path.is_file() or self.path.is_dir()):
            raise ConfigError(key, str(path), "an existing image file or folder of images")
        self.others = 0

    def __iter__(self) -> Iterator[str]:
        if self.path.is_file():
            yield str(self.path)
            return

        def unreadable_folder(error: OSError) -> None:  # os.walk would skip it without a word
            log.warning("Cannot read folder %s (%s): its images are not predicted", error.filename, error.strerror)

        for file in walk_files(self.path, on_error=unreadable_folder):
            if file.suffix.lower() in IMAGE_EXTENSIONS:
                yield str(file)
            else:
                self.others += 1


def list_inputs(path: str | Path, key: str = "input") -> list[str]:
    """One image file, or every image file under a folder (sorted, sub-folders included)."""
    return list(ImageFiles(path, key))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def predicted_batches(
    predictor: Predictor,
    paths: Iterable[str],
    batch_size: int = 32,
    num_workers: int | None = None,
    prefetch: bool = True,
    dataset_of: DatasetOf = image_files,
) -> Iterator[pd.DataFrame]:
    """The prediction table of ``paths``, one batch at a time, in input order: ``file_path, top1,
    p_top1, p_<class>..., error`` (a multi-label model's also ``predicted``: its decided genres,
    joined by ``|``). A file that cannot be decoded gets an ``error`` and empty probabilities; it
    never stops the run.

    ``num_workers``: decode threads (None: the cores the model leaves free, at least one);
    ``prefetch=False`` (or ``num_workers=0``) decodes each batch in this thread before the model runs it.
    ``dataset_of``: where the pixels of ``paths`` come from (default: the files, refused below the
    predictor's ``min_image_side`` as the intake refuses them; ``ShardImages.dataset``: verified already).
    """
    if dataset_of is image_files:
        dataset_of = partial(image_files, min_side=predictor.min_image_side)
    workers = predictor.decode_workers() if num_workers is None else num_workers
    classes = predictor.classes
    workers = workers if prefetch else 0
    for batch in decoded_batches(paths, predictor.eval_transform, batch_size, workers, dataset_of=dataset_of):
        probabilities = torch.full((len(batch.paths), len(classes)), float("nan"))
        errors = [""] * len(batch.paths)
        for position, reason in batch.failed:
            errors[position] = reason
        if batch.index.numel():
            probabilities[batch.index] = predictor.probabilities(batch.images).float().cpu()
        decisions = None
        if predictor.task.multilabel:
            decisions = predictor.task.decisions(probabilities.nan_to_num(0)).cpu()
        yield probability_frame(batch.paths, probabilities, classes, errors, decisions)


def table_columns(predictor: Predictor) -> list[str]:
    """The prediction table's columns for this model (those of an empty table)."""
    empty = torch.empty(0, len(predictor.classes))
    decisions = torch.empty(0, len(predictor.classes), dtype=torch.bool) if predictor.task.multilabel else None
    return list(probability_frame([], empty, predictor.classes, [], decisions).columns)


def predict_files(
    predictor: Predictor,
    paths: list[str],
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: bool = True,
    prefetch: bool = True,
) -> pd.DataFrame:
    """The prediction table of ``paths`` (see ``predicted_batches``), held in memory: for a list of
    files. A folder of any size goes to a CSV through ``predict_to_csv`` instead."""
    frames = []
    with Progress(len(paths) if progress else 0, "predict", "images") as bar:
        for frame in predicted_batches(predictor, paths, batch_size, num_workers, prefetch):
            frames.append(frame)
            bar.advance(len(frame))
    if not frames:
        return pd.DataFrame(columns=table_columns(predictor))
    return pd.concat(frames, ignore_index=True)


@dataclass
class CsvRun:
    """What ``predict_to_csv`` did: rows written by this run, how many of them are unreadable
    files, and how many files were skipped because the CSV already had them (``resume``)."""

    written: int = 0
    failed: int = 0
    resumed: int = 0


def predict_to_csv(
    predictor: Predictor,
    paths: Iterable[str],
    output_csv: str | Path,
    resume: bool = False,
    batch_size: int = 32,
    num_workers: int | None = None,
    prefetch: bool = True,
    progress: bool = True,
    dataset_of: DatasetOf = image_files,
) -> CsvRun:
    """Predict ``paths`` (read lazily) into ``output_csv``, appending each batch's rows as it comes.
    ``resume``: keep the rows already in the file and skip their files (each file once in the end);
    ``dataset_of``: as in ``predicted_batches``."""
    run = CsvRun()
    with PredictionCsv(output_csv, table_columns(predictor), resume) as table:
        done = table.done

        def not_done(items: Iterable[str]) -> Iterator[str]:
            for path in items:
                if path in done:
                    run.resumed += 1
                else:
                    yield path

        with Progress(None if progress else 0, "predict", "images") as bar:
            batches = predicted_batches(predictor, not_done(paths), batch_size, num_workers, prefetch, dataset_of)
            for frame in batches:
                table.append(frame)
                run.written += len(frame)
                run.failed += int((frame["error"] != "").sum())
                bar.advance(len(frame))
    return run
