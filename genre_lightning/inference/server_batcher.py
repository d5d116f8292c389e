"""genre-serve's dynamic batching: requests that arrive within ``batch_wait_ms`` of the first one run
as one batch of up to ``max_batch_size`` images, on one model thread (explanations run there too)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from genre_lightning.inference.predictor import GenrePrediction, Predictor

log = logging.getLogger(__name__)


class Batcher:
    """Dynamic batching on one model thread: the first waiting image opens a batch, which takes every
    image arriving within ``wait_s`` (up to ``max_batch_size``) and runs as one forward pass."""

    def __init__(self, predictor: Predictor, max_batch_size: int, wait_s: float) -> None:
        self.predictor = predictor
        self.max_batch_size, self.wait_s = max_batch_size, wait_s
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future]] = asyncio.Queue()
        self.batches: list[int] = []  # sizes of the latest batches (for /health)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.model_thread.shutdown(wait=True)

    async def predict(self, image: torch.Tensor) -> GenrePrediction:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((image, future))
        return await future

    async def on_model_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function`` between batches (explanations: backward hooks on the one network)."""
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, function, *args)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self.queue.get()]
            deadline = loop.time() + self.wait_s
            while len(waiting) < self.max_batch_size:
                try:
                    waiting.append(await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time())))
                except TimeoutError:
                    break
            images = torch.stack([image for image, _ in waiting])
            try:
                results = await self.on_model_thread(self._predict, images)
            except Exception as err:  # a model failure answers these requests (500), the server goes on
                log.exception("Prediction failed for a batch of %d images", len(waiting))
                results = [err] * len(waiting)
            self.batches = (self.batches + [len(waiting)])[-100:]
            for (_, future), result in zip(waiting, results, strict=True):
                if future.done():  # the client went away
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _predict(self, images: torch.Tensor) -> list[GenrePrediction]:
        classes = len(self.predictor.classes)
        return self.predictor.predict(images, top_k=classes, batch_size=len(images))
