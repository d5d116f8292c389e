"""Training progress a person can follow: the rich bar on a terminal, log lines everywhere else.

A Slurm ``.out`` file, ``nohup`` or a CI log is not a terminal, and the rich progress bar draws
nothing there. :class:`EpochLines` instead writes one line per epoch through the project's
logger (so it lands on stdout and in the run folder's ``<task>.log``), plus a line every
``interval_s`` seconds inside a long epoch. :func:`progress_bar` picks one of the two.

The lines read values that the model has already made global (``distributed.py``): reading them
on rank 0 alone starts no collective.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

from genre_lightning.utils.errors import ConfigError
from genre_lightning.utils.progress import duration, interactive

log = logging.getLogger(__name__)
MODES = ("auto", "rich", "lines")
# What an epoch line shows, when the run logged it.
LINE_METRICS = ("train/loss", "val/loss", "val/acc", "val/f1_macro")


def progress_bar(mode: str = "auto", enabled: bool = True, interval_s: float = 60.0) -> ProgressBar | None:
    """The progress callback: ``rich`` (the bar), ``lines`` (:class:`EpochLines`) or ``auto``
    (the bar on a terminal, lines otherwise). None when ``trainer.enable_progress_bar=false``."""
    if mode not in MODES:
        raise ConfigError("callbacks.progress.mode", mode, f"one of {list(MODES)}")
    if not enabled:
        return None
    if mode == "rich" or (mode == "auto" and interactive()):
        return RichProgressBar()
    return EpochLines(interval_s=interval_s)


class EpochLines(ProgressBar):
    """One log line per finished epoch (global rank 0 only)::

        epoch 3/20  train/loss 1.2345  val/loss 1.1020  val/acc 0.6500  val/f1_macro 0.6123
        best val/acc 0.7000 (epoch 2)  lr head 1.00e-03 backbone1 1.00e-04  12.3 s  ETA 3m 05s

    (on one line), and every ``interval_s`` seconds inside a longer epoch, validation or test a line
    with its step count. An epoch's line is written once everything of that epoch is logged (the
    model logs train/loss at the very end of it), i.e. just before the next epoch starts and at
    the end of training. Epochs count from 1 here; checkpoint names keep Lightning's 0-based epoch.
    """

    def __init__(self, interval_s: float = 60.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.monitor, self.monitor_mode = "val/acc", "max"  # the checkpoint callback's, at fit start
        self._enabled = True
        self.best: tuple[float, int | None] | None = None  # (value, 1-based epoch; None: before a resume)
        self.lines: list[str] = []  # every epoch line written, for callers and tests
        self._epoch: int | None = None  # the 0-based epoch whose line is pending
        self._epoch_start = self._last_line = 0.0
        self._epoch_seconds: list[float] = []
        self._lrs: list[tuple[str | None, float]] = []
        self._validated_in: int | None = None

    # ProgressBar's contract: Lightning disables it on ranks other than 0.
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and getattr(checkpoint, "monitor", None):
            self.monitor, self.monitor_mode = checkpoint.monitor, checkpoint.mode
            if checkpoint.best_model_score is not None:  # a resumed run: its best so far
                self.best = (float(checkpoint.best_model_score), None)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write_epoch_line(trainer)
        now = time.monotonic()
        self._epoch, self._epoch_start, self._last_line = trainer.current_epoch, now, now
        self._lrs = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if not self._lrs:  # after every epoch-start hook: a fine-tuning callback may have added a group
            groups = [group for optimizer in trainer.optimizers for group in optimizer.param_groups]
            self._lrs = [(group.get("name"), float(group["lr"])) for group in groups]

    # Lightning passes (outputs, batch, batch_idx[, dataloader_idx]): batch_idx + 1 batches are done.
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self._maybe_step_line(trainer, "train", args[2] + 1)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if not trainer.sanity_checking:
            self._maybe_step_line(trainer, "validation", args[2] + 1)

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self._maybe_step_line(trainer, "test", args[2] + 1)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_in = trainer.current_epoch

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write_epoch_line(trainer)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_line = time.monotonic()

    @staticmethod
    def _total_batches(trainer: Trainer, phase: str) -> float:
        """Batches of the running loop (its first dataloader); inf when the loader has no length."""
        totals = {"train": trainer.num_training_batches, "validation": trainer.num_val_batches}
        total = totals.get(phase, trainer.num_test_batches)
        return (total[0] if total else 0) if isinstance(total, list) else total

    def _maybe_step_line(self, trainer: Trainer, phase: str, done: int) -> None:
        now = time.monotonic()
        if not self._enabled or now - self._last_line < self.interval_s:
            return
        self._last_line = now
        total = self._total_batches(trainer, phase)
        of = f"/{int(total)} ({done / total:.0%})" if 0 < total < math.inf else ""
        where = f"epoch {trainer.current_epoch + 1}{self._of_epochs(trainer)} " if phase != "test" else ""
        loss = trainer.callback_metrics.get("train/loss_step") if phase == "train" else None
        loss_text = f"  train/loss_step {float(loss):.4f}" if loss is not None else ""
        log.info("%s%s step %d%s%s  %s elapsed", where, phase, done, of, loss_text, duration(now - self._epoch_start))

    @staticmethod
    def _of_epochs(trainer: Trainer) -> str:
        return f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""

    def _write_epoch_line(self, trainer: Trainer) -> None:
        """The pending epoch's line, once (the next epoch's start and the end of training both ask)."""
        epoch, self._epoch = self._epoch, None
        if epoch is None or not self._enabled or trainer.sanity_checking:
            return
        seconds = time.monotonic() - self._epoch_start
        self._epoch_seconds.append(seconds)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in LINE_METRICS}
        if self._validated_in != epoch:  # no validation this epoch: its val/* would be an older epoch's
            metrics = {k: v for k, v in metrics.items() if not k.startswith("val/")}
        parts = [f"epoch {epoch + 1}{self._of_epochs(trainer)}"]
        parts += [f"{name} {metrics[name]:.4f}" for name in LINE_METRICS if name in metrics]
        value = metrics.get(self.monitor)
        if value is not None and not math.isnan(value):
            better = self.best is None or (value > self.best[0] if self.monitor_mode == "max" else value < self.best[0])
            if better:
                self.best = (value, epoch + 1)
        if self.best is not None:
            when = f"epoch {self.best[1]}" if self.best[1] is not None else "before the resume"
            parts.append(f"best {self.monitor} {self.best[0]:.4f} ({when})")
        if len(self._lrs) == 1 and self._lrs[0][0] is None:  # one unnamed group: no fine-tuning schedule
            parts.append(f"lr {self._lrs[0][1]:.2e}")
        elif self._lrs:
            parts.append("lr " + " ".join(f"{name or f'pg{i}'} {lr:.2e}" for i, (name, lr) in enumerate(self._lrs)))
        parts.append(duration(seconds))
        remaining = (trainer.max_epochs - epoch - 1) if trainer.max_epochs and trainer.max_epochs > 0 else None
        if remaining and not trainer.should_stop:
            mean = sum(self._epoch_seconds) / len(self._epoch_seconds)
            parts.append(f"ETA {duration(mean * remaining)}")
        line = "  ".join(parts)
        self.lines.append(line)
        log.info(line)
