"""A test callback that writes each rank's weights digest after fitting, so a DDP test compares the
ranks itself instead of trusting the run's own report (``metrics.json``'s ``ddp``).

Added to a run as ``+callbacks.rank_weights._target_=tests.helpers.rank_weights.WriteRankWeights``
(the rank processes need the repository on ``PYTHONPATH``: ``RANK_ENV``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from tests.helpers.paths import REPO

FOLDER = "rank_weights"
OVERRIDE = f"+callbacks.rank_weights._target_={__name__}.WriteRankWeights"
RANK_ENV = {"PYTHONPATH": str(REPO)}


class WriteRankWeights(Callback):
    """At the end of fitting (after every other callback's ``on_train_end``, e.g. EMA's swap to the
    averaged weights, and before testing loads the best checkpoint) write ``<run>/rank_weights/rank<r>.json``:
    the SHA-256 of each tensor of the state dict, by name."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        digests = {}
        for name, tensor in pl_module.state_dict().items():
            value = tensor.detach().cpu().contiguous()
            raw = value.reshape(-1).view(torch.uint8).numpy().tobytes()  # any dtype, bfloat16 included
            digests[name] = f"{value.dtype}{tuple(value.shape)}:{hashlib.sha256(raw).hexdigest()}"
        folder = Path(trainer.default_root_dir) / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(digests, indent=0))


def rank_weights(run: Path) -> list[dict[str, str]]:
    """Each rank's digests, in rank order."""
    files = sorted((run / FOLDER).glob("rank*.json"), key=lambda p: int(p.stem.removeprefix("rank")))
    return [json.loads(p.read_text()) for p in files]


def assert_ranks_identical(run: Path, world_size: int = 2) -> None:
    """Every rank wrote its digests, and every tensor is bit-identical on all of them."""
    ranks = rank_weights(run)
    assert len(ranks) == world_size, f"{len(ranks)} of {world_size} ranks wrote their weights in {run / FOLDER}"
    first = ranks[0]
    assert len(first) > 0
    for rank, digests in enumerate(ranks[1:], start=1):
        assert digests.keys() == first.keys(), rank
        different = [name for name in first if digests[name] != first[name]]
        assert different == [], f"rank {rank} differs from rank 0 in {different}"
