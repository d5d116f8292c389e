"""LR schedules in closed form: each group's LR is its base LR times a factor of the epoch, so
param groups that gradual unfreezing adds later follow the same curve."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupCosineLR(LRScheduler):
    """Linear warm-up from ``warmup_start`` x base LR over ``warmup_epochs``, then cosine decay to
    ``min_ratio`` x base LR at ``max_epochs``. Step it once per epoch."""

    def __init__(
        self,
        optimizer: Optimizer,
        max_epochs: int,
        warmup_epochs: int = 1,
        warmup_start: float = 0.1,
        min_ratio: float = 0.01,
        last_epoch: int = -1,
    ) -> None:
        self.max_epochs = max_epochs
        self.warmup_epochs = warmup_epochs
        self.warmup_start = warmup_start
        self.min_ratio = min_ratio
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return self.warmup_start + (1 - self.warmup_start) * epoch / self.warmup_epochs
        span = max(1, self.max_epochs - self.warmup_epochs)
        progress = min(1.0, (epoch - self.warmup_epochs) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]
