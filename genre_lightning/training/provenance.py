"""Every checkpoint genre-train writes says where it came from: ``checkpoint["genre_lightning"]``
holds the environment (``utils/environment.py``) and the command line (the program and its Hydra
overrides) that made it, so a checkpoint alone can be traced and retrained (docs/provenance.md).
Reading it back is checkpoint reading (``models/checkpoint_io.provenance``): the model card needs
nothing of training."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch import Callback

from genre_lightning.models.checkpoint_io import PROVENANCE_KEY


class RecordProvenance(Callback):
    """Adds ``{"environment": ..., "program": ..., "overrides": [...]}`` under :data:`PROVENANCE_KEY`
    to each checkpoint Lightning saves (best, last and requeue checkpoints alike)."""

    def __init__(self, environment: Mapping[str, Any], overrides: Sequence[str], program: str = "genre-train"):
        self.record = {"environment": dict(environment), "program": program, "overrides": [str(o) for o in overrides]}

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[PROVENANCE_KEY] = dict(self.record)
