"""Map a function over many items in worker processes, in order, with a bounded number of chunks in flight.

Decoding images is CPU work that holds the GIL for much of its time (threads gave 1.15x from 1 to
4 threads, docs/PERFORMANCE.md); processes use every core. Items are sent in chunks, and only
``workers * IN_FLIGHT_PER_WORKER`` chunks are submitted at a time, so a million files never become
a million futures (or a million pickled results waiting in memory).

Workers are forked (as PyTorch's DataLoader workers are on Linux): they start in milliseconds
and import nothing. ``spawn`` and ``forkserver`` workers run the main module again in every
worker (for ``genre-train`` that is torch, Lightning and Hydra: seconds per worker) and fail where
there is none (``python - < script``). The scan runs before training starts (no CUDA context, no
process group yet), and the workers only read files and decode with PIL and numpy.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

IN_FLIGHT_PER_WORKER = 3


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as Slurm and taskset set it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _apply(function: Callable[[T], R], chunk: Sequence[T]) -> list[R]:
    return [function(item) for item in chunk]


def process_map(
    function: Callable[[T], R],
    items: Sequence[T],
    workers: int,
    chunk_size: int = 32,
) -> Iterator[R]:
    """``function(item)`` for every item, in order, computed in ``workers`` processes (a module-level
    ``function``: it is sent to the workers by name)."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    chunks = (items[start : start + chunk_size] for start in range(0, len(items), chunk_size))
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: deque[Future[Any]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(_apply, function, chunk))
            if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
