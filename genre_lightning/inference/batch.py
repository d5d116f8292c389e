"""Batch prediction: many image files through a ``Predictor``, decoded in a background thread.

What genre-predict runs on a folder, and what ``Predictor.predict`` runs on file paths: a loader of
the files through the model's evaluation transform, one thread decoding the next batch while the
network runs on this one, and a table with one row per file (``prediction_table.probability_frame``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar

import pandas as pd
import torch
from torch.utils.data import DataLoader

from genre_lightning.data.dataset import PosterDataset, collate_posters
from genre_lightning.data.scan import IMAGE_EXTENSIONS, walk_files
from genre_lightning.inference.prediction_table import probability_frame
from genre_lightning.training.tasks import GenreTask
from genre_lightning.utils.errors import ConfigError
from genre_lightning.utils.progress import Progress

log = logging.getLogger(__name__)

Batch = TypeVar("Batch")


class Predictor(Protocol):
    """What batch prediction needs of a model (``inference.predictor.Predictor`` has it)."""

    classes: list[str]
    task: GenreTask
    network: torch.nn.Module
    channels_last: bool
    device: torch.device
    eval_transform: Callable

    def logits(self, images: torch.Tensor) -> torch.Tensor: ...


def list_inputs(path: str | Path, key: str = "input") -> list[str]:
    """One image file, or every image file under a folder (sorted, sub-folders included)."""
    path = Path(path)
    if path.is_file():
        return [str(path)]
    if path.is_dir():

        def unreadable_folder(error: OSError) -> None:  # os.walk would skip it without a word
            log.warning("Cannot read folder %s (%s): its images are not predicted", error.filename, error.strerror)

        return [str(p) for p in walk_files(path, on_error=unreadable_folder) if p.suffix.lower() in IMAGE_EXTENSIONS]
    raise ConfigError(key, str(path), "an existing image file or folder of images")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prefetched(batches: Iterable[Batch]) -> Iterator[Batch]:
    """Yield ``batches`` while one background thread prepares the next: JPEG decoding and resizing
    release the GIL, so decoding batch i + 1 overlaps the model's work on batch i, without the
    process start-up and tensor copies of DataLoader workers (docs/PERFORMANCE.md)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        iterator = iter(batches)
        pending = pool.submit(next, iterator, None)
        while (batch := pending.result()) is not None:
            pending = pool.submit(next, iterator, None)
            yield batch


def predict_files(
    predictor: Predictor,
    paths: list[str],
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = True,
    bf16: bool = False,
    freeze: bool = False,
    prefetch: bool = True,
) -> pd.DataFrame:
    """Probabilities for each file: ``file_path, top1, p_top1, p_<class>..., error`` (a multi-label
    model's also ``predicted``: its decided genres, joined by ``|``).

    A file that cannot be decoded gets an ``error`` and empty probabilities; it never stops the run.
    ``freeze`` (a frozen TorchScript trace: BatchNorm folded into the convolutions), ``bf16``
    (autocast) and ``prefetch`` (decode the next batch in a thread while the model runs; with
    ``num_workers`` > 0 the loader's workers do that instead) are the speed settings measured in
    docs/PERFORMANCE.md.
    """
    device = predictor.device
    dataset = PosterDataset(paths, [0] * len(paths), predictor.eval_transform)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_posters)
    probabilities = torch.full((len(paths), len(predictor.classes)), float("nan"))
    errors = [""] * len(paths)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    logits: Callable[[torch.Tensor], torch.Tensor] | None = None
    with (
        torch.inference_mode(),
        autocast,
        Progress(len(paths) if progress else 0, "predict", "images") as bar,
    ):
        for batch in prefetched(loader) if prefetch and num_workers == 0 else loader:
            for index, reason in batch["failed"]:
                errors[index] = reason
            if batch["index"].numel():
                images = batch["image"].to(device)
                if logits is None:
                    logits = frozen_logits(predictor, images) if freeze and not bf16 else predictor.logits
                probabilities[batch["index"]] = predictor.task.probabilities(logits(images).float()).cpu()
            bar.advance(batch["index"].numel() + len(batch["failed"]))
    decisions = None
    if predictor.task.multilabel:
        decisions = predictor.task.decisions(probabilities.nan_to_num(0).to(device)).cpu()
    return probability_frame(paths, probabilities, predictor.classes, errors, decisions)


def frozen_logits(predictor: Predictor, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A frozen TorchScript trace of the predictor's network: BatchNorm folded into the convolutions
    (docs/PERFORMANCE.md). Falls back to the network itself if tracing fails or changes the logits."""
    memory_format = torch.channels_last if predictor.channels_last else torch.contiguous_format
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notices
            traced = torch.jit.trace(predictor.network, example[:2].contiguous(memory_format=memory_format))
            frozen = torch.jit.freeze(traced)

            def forward(images: torch.Tensor) -> torch.Tensor:
                return frozen(images.contiguous(memory_format=memory_format))

            if (forward(example) - predictor.logits(example)).abs().max().item() <= 1e-4:
                return forward
        log.warning("The frozen trace changed the logits; predicting with the model as it is")
    except Exception as err:  # a model TorchScript cannot trace: eager is always correct
        log.warning("Could not freeze the model for inference (%s); predicting with the model as it is", err)
    return predictor.logits
