"""A test helper callback for the preemption test (tests/test_slurm.py), loaded by the Slurm job.

It holds training at one step until the job has received the requeue signal, so the test sends
``scancel --signal`` to a job that is known to be training, however slow the machine is.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from genre_lightning.launch.slurm import RequeueOnSignal

PAUSED_FILE = "paused_at_step"


class PauseUntilSignal(Callback):
    """At ``global_step == step`` write ``<run>/paused_at_step`` and wait for the requeue signal."""

    def __init__(self, step: int, timeout_s: float = 300.0) -> None:
        self.step = step
        self.timeout_s = timeout_s

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        marker = Path(trainer.default_root_dir) / PAUSED_FILE
        if trainer.global_step != self.step or marker.exists():
            return
        requeue = next(c for c in trainer.callbacks if isinstance(c, RequeueOnSignal))
        marker.write_text(str(self.step))
        deadline = time.monotonic() + self.timeout_s
        while requeue.received is None and time.monotonic() < deadline:
            time.sleep(0.1)
