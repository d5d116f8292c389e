"""Give freed memory back to the operating system between the phases of a run.

glibc keeps what a process frees (here: the activations of the last training steps, about a
gigabyte for EfficientNet-Lite0 at 288x192) for later allocations, so the resident size after
training stays near its peak, and the next phase (validation, test) adds its own needs on top.
``malloc_trim(0)`` at each switch between training and evaluation returns it; the next phase
then starts from the live memory alone (docs/PERFORMANCE.md has the measurements). It costs
milliseconds. Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)


def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


_TRIM = _malloc_trim()


def release_freed_memory() -> bool:
    """Return the C heap's free memory to the system; False where that is not possible."""
    if _TRIM is None:
        return False
    gc.collect()
    _TRIM(0)
    return True


class ReleaseFreedMemory(Callback):
    """``release_freed_memory()`` whenever a run switches between training and evaluation."""

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        release_freed_memory()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        release_freed_memory()

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        release_freed_memory()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        release_freed_memory()
