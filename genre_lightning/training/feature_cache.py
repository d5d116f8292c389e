"""Frozen-feature cache: while the backbone is frozen, compute its features once per image.

When every backbone parameter is frozen, the backbone is a fixed function, so the pooled
features of an image (seen through a deterministic transform) never change. The
``FrozenFeatureCache`` callback then hands the model a ``FeatureStore`` (``use_feature_store``); the model runs the
backbone only for images the store has not seen, and trains the classifier on stored
features. Training uses it only when the training transform is deterministic (no
augmentation) and the backbone has no stochastic depth (``drop_path_rate`` > 0 drops residual
branches at random in training, which stored eval-mode features would not); validation and
test use it whenever the backbone is frozen.

The store is named by a fingerprint of the frozen weights, the data config and the backbone,
and items by ``cache_key`` (the content hash, or path + size + mtime when the split file has
no hash), so changed weights, transforms or images never hit stale entries. With ``cache_dir``
set, stores are saved as ``<cache_dir>/features/<name>.pt``
(tensors only, loaded with ``weights_only=True``) and reused by later runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from timm.layers import DropBlock2d, DropPath

from genre_lightning.data.image_cache import cache_key

log = logging.getLogger(__name__)


class FeatureStore:
    """Pooled backbone features by image key, for one frozen backbone and one transform."""

    def __init__(self, name: str, path: Path | None = None) -> None:
        self.name = name
        self.path = path
        self.table: dict[str, torch.Tensor] = {}
        self.stages: set[str] = set()
        self.hits = self.misses = 0
        self._saved_size = 0
        if path is not None and path.is_file():
            self.table = torch.load(path, map_location="cpu", weights_only=True)
            self._saved_size = len(self.table)

    def features(self, keys: Sequence[str], images: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]):
        """Features for a batch: stored ones looked up, the rest computed (and stored).

        ``keys`` are the dataset's: content hashes, or file paths when the split file has none."""
        # A path key names the file, not its content: stamp it with size and mtime (see cache_key).
        keys = [cache_key(key, key) for key in keys]
        missing = [i for i, key in enumerate(keys) if key not in self.table]
        if missing:
            computed = compute(images[missing]).detach().float().cpu()
            for i, row in zip(missing, computed, strict=True):
                self.table[keys[i]] = row.clone()
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return torch.stack([self.table[key] for key in keys]).to(images.device)

    def save(self) -> None:
        if self.path is None or len(self.table) == self._saved_size:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(self.table, tmp)
        tmp.replace(self.path)
        self._saved_size = len(self.table)


def backbone_is_frozen(pl_module: LightningModule) -> bool:
    classifier = {id(p) for p in pl_module.net.get_classifier().parameters()}
    return not any(p.requires_grad for p in pl_module.net.parameters() if id(p) not in classifier)


def backbone_is_stochastic(pl_module: LightningModule) -> bool:
    """Whether the backbone draws random numbers in training mode (stochastic depth, DropBlock):
    then its training-mode features are not a fixed function of the image."""
    return any(isinstance(m, DropPath | DropBlock2d) and m.drop_prob > 0 for m in pl_module.net.modules())


def backbone_fingerprint(pl_module: LightningModule) -> str:
    """A hash of every backbone tensor (weights and BatchNorm statistics), classifier excluded."""
    classifier = {id(p) for p in pl_module.net.get_classifier().parameters()}
    digest = hashlib.sha1()
    for name, tensor in [*pl_module.net.named_parameters(), *pl_module.net.named_buffers()]:
        if id(tensor) in classifier:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class FrozenFeatureCache(Callback):
    """Switches the model to stored features whenever its backbone is frozen (see module doc)."""

    def __init__(self, cache_dir: str | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._stores: dict[str, FeatureStore] = {}
        self._said_why_not = False

    def store_for(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> FeatureStore:
        config = {
            "backbone": pl_module.hparams.backbone,
            "weights": backbone_fingerprint(pl_module),
            "data_config": {k: str(v) for k, v in sorted(pl_module.data_config.items())},
            "flip_averaged": pl_module.flip_averaged(stage),
        }
        name = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
        if name not in self._stores:
            # Per-rank files under DDP: each rank sees its own shard of the images.
            suffix = f"-rank{trainer.global_rank}" if trainer.world_size > 1 else ""
            path = self.cache_dir / "features" / f"{name}{suffix}.pt" if self.cache_dir else None
            self._stores[name] = FeatureStore(name, path)
        return self._stores[name]

    def _attach(self, trainer: Trainer, pl_module: LightningModule, stage: str, usable: bool) -> None:
        if not usable:
            pl_module.use_feature_store(None)
            return
        store = self.store_for(trainer, pl_module, stage)
        store.stages = {stage}
        pl_module.use_feature_store(store)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        deterministic = getattr(trainer.datamodule, "augment", "unknown") is None
        usable = deterministic and backbone_is_frozen(pl_module)
        if usable and backbone_is_stochastic(pl_module):
            usable = False
            if not self._said_why_not:
                self._said_why_not = True
                log.info(
                    "Frozen-feature cache: not used for training batches, the backbone has stochastic depth "
                    "(model.drop_path_rate=%s); validation and test still use it",
                    pl_module.hparams.get("drop_path_rate"),
                )
        self._attach(trainer, pl_module, "train", usable)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._attach(trainer, pl_module, "val", backbone_is_frozen(pl_module))

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._attach(trainer, pl_module, "test", backbone_is_frozen(pl_module))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for store in self._stores.values():
            store.save()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._report(trainer, "fit")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.on_train_epoch_end(trainer, pl_module)
        pl_module.use_feature_store(None)
        self._report(trainer, "test")

    def _report(self, trainer: Trainer, phase: str) -> None:
        """One line of what the cache did (rank 0's lookups under DDP)."""
        lookups = sum(s.hits + s.misses for s in self._stores.values())
        if lookups and trainer.is_global_zero:
            hits = sum(s.hits for s in self._stores.values())
            log.info(
                "Frozen-feature cache (%s): %d of %d image lookups served from stored features, %d computed",
                phase,
                hits,
                lookups,
                lookups - hits,
            )
