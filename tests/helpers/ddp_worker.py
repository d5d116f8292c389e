"""Run by test_ddp.py as ``python -m tests.helpers.ddp_worker POSTERS OUT``.

Two real 2-process CPU DDP fits (gloo) that cross an unfreeze milestone: first with our gradient
sync for late-unfrozen parameters (into OUT/sync), then without it (the control, OUT/nosync).
Lightning starts the second process by re-running this module; the second fit reuses both
processes and their process group. Each rank saves its weights and the split it read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback

from genre_lightning.cli.train import build
from genre_lightning.data.annotations import split_digest
from genre_lightning.training.finetune import GradualUnfreeze
from tests.helpers.configs import train_config


class UnsyncedGradualUnfreeze(GradualUnfreeze):
    """The control: what plain BaseFinetuning does under DDP (no sync for late-unfrozen params)."""

    def on_after_backward(self, trainer, pl_module) -> None:
        pass


class SaveRankState(Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(
            {
                "start": self.start,
                "end": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                "split_digest": split_digest(trainer.datamodule.frame),
                "world_size": trainer.world_size,
            },
            self.out / f"rank{trainer.global_rank}.pt",
        )


def fit(posters: Path, out_dir: Path, mode: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = train_config(
        posters,
        out_dir,
        "trainer=ddp_cpu",
        "finetune=none",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        "data.batch_size=8",
        "test=false",
        "logger=csv",
        "model/scheduler=constant",
        "model.optimizer.lr=0.01",
    )
    pl.seed_everything(0)
    finetune = (GradualUnfreeze if mode == "sync" else UnsyncedGradualUnfreeze)(milestones=[1])
    datamodule, model, trainer = build(cfg, extra_callbacks=[finetune, SaveRankState(out_dir)])
    trainer.fit(model, datamodule=datamodule)


def main(posters: str, out: str) -> None:
    for mode in ("sync", "nosync"):
        fit(Path(posters), Path(out) / mode, mode)


if __name__ == "__main__":
    main(*sys.argv[1:3])
