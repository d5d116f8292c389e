"""Image files into model batches: decoded and resized in a pool of threads, a bounded number of
images ahead of the model, in input order.

Threads, not processes: PIL's JPEG decoder and resize and torch's tensor conversion release the
GIL, so threads decode in parallel without a worker process's start-up, pickled batches and
memory copies (``bench/performance.py --sections predict`` measures both). Each image is one task,
so the threads share a batch evenly; at most ``ahead`` batches of images are decoded or in flight
beyond the one the model is running on, however many files the input holds. The pixels are the
training pipeline's: ``PosterDataset`` (``data/imageio.read_rgb`` and the checkpoint's eval transform),
or another source's dataset of the same items (``data/shards.ShardImages.dataset``: LitData shards).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from genre_lightning.data.dataset import PosterDataset, collate_posters


@dataclass
class DecodedBatch:
    """One batch of files: ``images`` holds the readable ones, at positions ``index`` of ``paths``;
    ``failed`` lists ``(position, reason)`` for the others."""

    paths: list[str]
    images: torch.Tensor
    index: torch.Tensor
    failed: list[tuple[int, str]]


def decode_workers(cores: int, forward_threads: int) -> int:
    """Decode threads for ``cores`` when the forward pass runs ``forward_threads``: the cores it
    leaves free, and at least one (which then shares a core with it while the model runs)."""
    return max(1, cores - forward_threads)


DatasetOf = Callable[[Sequence[str], Callable], PosterDataset]


def image_files(paths: Sequence[str], transform: Callable, min_side: int | None = None) -> PosterDataset:
    """``paths`` as image files to read (a picture whose shorter side is below ``min_side`` is refused)."""
    return PosterDataset(paths, [0] * len(paths), transform, min_side=min_side)


def decoded_batches(
    paths: Iterable[str],
    transform: Callable,
    batch_size: int,
    workers: int,
    ahead: int = 2,
    dataset_of: DatasetOf = image_files,
) -> Iterator[DecodedBatch]:
    """Batches of ``paths`` (any iterable, read lazily) through ``transform``, in order. With
    ``workers`` > 0 the next ``ahead`` batches are decoded by that many threads while the caller
    works on this one; with 0, each batch is decoded when it is asked for, in this thread.
    ``dataset_of(chunk, transform)`` reads a chunk of ``paths`` (default: image files)."""
    chunks = _chunks(iter(paths), batch_size)
    if workers == 0:
        for chunk in chunks:
            dataset = dataset_of(chunk, transform)
            yield _collate(chunk, [dataset[i] for i in range(len(chunk))])
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque[tuple[list[str], list[Future]]] = deque()

        def submit_next() -> bool:
            chunk = next(chunks, None)
            if chunk is None:
                return False
            dataset = dataset_of(chunk, transform)
            pending.append((chunk, [pool.submit(dataset.__getitem__, i) for i in range(len(chunk))]))
            return True

        while len(pending) < max(1, ahead) and submit_next():
            pass
        while pending:
            chunk, futures = pending.popleft()
            submit_next()  # keep ``ahead`` batches decoding while this one is used
            yield _collate(chunk, [future.result() for future in futures])


def _chunks(paths: Iterator[str], size: int) -> Iterator[list[str]]:
    while chunk := list(itertools.islice(paths, size)):
        yield chunk


def _collate(chunk: list[str], items: list) -> DecodedBatch:
    batch = collate_posters(items)
    return DecodedBatch(chunk, batch["image"], batch["index"], batch["failed"])
