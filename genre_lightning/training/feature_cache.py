"""Frozen-feature cache: while the backbone is frozen, compute its features once per image.

When every backbone parameter is frozen, the backbone is a fixed function, so the pooled
features of an image (seen through a deterministic transform) never change. The
``FrozenFeatureCache`` callback then hands the model a ``FeatureStore`` (``use_feature_store``); the model runs the
backbone only for images the store has not seen, and trains the classifier on stored
features. Training uses it only when the training transform is deterministic (no
augmentation) and the backbone has no stochastic depth (``drop_path_rate`` > 0 drops residual
branches at random in training, which stored eval-mode features would not); validation and
test use it whenever the backbone is frozen.

The store is named by a fingerprint of the frozen weights, the data config, the backbone and the
test-time views averaged (``model.tta_hflip``, ``model.tta``), and items by ``cache_key`` (the
content hash, or path + size + mtime when the split file has no hash), so changed weights,
transforms, views or images never hit stale entries. A model of several backbones
(``model.backbone=[a,b]``) has one store per backbone, each named as that backbone's own
single-backbone model names its store (``FeatureStoreGroup``): a single-backbone run's features
serve the concatenated model, and adding a backbone computes only that backbone's features.

A store on disk is a folder of parts: ``part-<rank>-<n>.npy`` (rows of features, float32 or
float16, read memory-mapped) and ``part-<rank>-<n>.keys`` (their keys, one a line, written last so a
reader never sees half a part). Rows are written a chunk at a time, by whichever rank computed
them, and every rank reads every rank's parts: one store shared by the ranks, never loaded whole
into memory. With ``cache_dir`` set the stores live in ``<cache_dir>/features/<name>/`` and
serve later runs; without it they stay in memory, except under DDP, where the ranks share one in
the run folder (``<run>/features/<name>/``, which can be deleted after the run).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch.nn as nn
from lightning.pytorch import Callback, LightningModule, Trainer
from timm.layers import DropBlock2d, DropPath

from genre_lightning.models.multi_backbone import MultiBackboneNet
from genre_lightning.models.tta import TTA
from genre_lightning.training.feature_store import (
    FEATURE_DTYPES,
    FeatureStore,
    FeatureStoreGroup,
    store_folder,
)
from genre_lightning.utils.errors import ConfigError

log = logging.getLogger(__name__)

# Stores kept in memory for the next job of the same multirun in this process (the folds of a
# cross-validation, the trials of a search): a frozen backbone's features are the same in every fold.
_SWEEP_STORES: dict[tuple[str, str], FeatureStore] = {}


def _this_sweep() -> str | None:
    """The multirun folder this job belongs to, or None (a single run keeps its stores to itself)."""
    from hydra.core.hydra_config import HydraConfig  # only under a Hydra app; the predictor never gets here
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return str(HydraConfig.get().sweep.dir)


def backbone_is_frozen(pl_module: LightningModule) -> bool:
    classifier = {id(p) for p in pl_module.net.get_classifier().parameters()}
    return not any(p.requires_grad for p in pl_module.net.parameters() if id(p) not in classifier)


def backbone_is_stochastic(pl_module: LightningModule) -> bool:
    """Whether the backbone draws random numbers in training mode (stochastic depth, DropBlock):
    then its training-mode features are not a fixed function of the image."""
    return any(isinstance(m, DropPath | DropBlock2d) and m.drop_prob > 0 for m in pl_module.net.modules())


def backbone_fingerprint(pl_module: LightningModule) -> str:
    """A hash of every backbone tensor (weights and BatchNorm statistics), classifier excluded."""
    return network_fingerprint(pl_module.net)


def network_fingerprint(net: nn.Module) -> str:
    """A hash of every tensor of a timm network (weights and BatchNorm statistics) but its classifier's:
    a network without a classifier (``reset_classifier(0)``) hashes as the same network with one."""
    classifier = {id(p) for p in net.get_classifier().parameters()}
    digest = hashlib.sha1()
    for name, tensor in [*net.named_parameters(), *net.named_buffers()]:
        if id(tensor) in classifier:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class FrozenFeatureCache(Callback):
    """Switches the model to stored features whenever its backbone is frozen (see module doc)."""

    def __init__(self, cache_dir: str | None = None, dtype: str = "float32") -> None:
        if dtype not in FEATURE_DTYPES:
            raise ConfigError("callbacks.feature_cache.dtype", dtype, f"one of {list(FEATURE_DTYPES)}")
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.dtype = dtype
        self._stores: dict[str, FeatureStore] = {}
        self._said_why_not = False

    def store_for(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> FeatureStore | FeatureStoreGroup:
        flip = pl_module.test_time_augmentation(stage)
        net = pl_module.net
        if isinstance(net, MultiBackboneNet):  # one store per backbone, named as its own model would name it
            parts = [
                self._store(trainer, name, network_fingerprint(part), config, flip)
                for name, part, config in zip(net.names, net.backbones, net.part_data_configs, strict=True)
            ]
            return FeatureStoreGroup("+".join(part.name for part in parts), parts)
        return self._store(
            trainer, pl_module.hparams.backbone, backbone_fingerprint(pl_module), pl_module.data_config, flip
        )

    def _store(self, trainer: Trainer, backbone: str, fingerprint: str, data_config: dict, views: TTA) -> FeatureStore:
        config = {
            "backbone": backbone,
            "weights": fingerprint,
            "data_config": {k: str(v) for k, v in sorted(data_config.items())},
            "flip_averaged": views.hflip,
        }
        if not views.flip_only:  # (flip alone keeps the name its features were stored under before model.tta)
            config["tta"] = views.to_dict()
        name = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
        if name not in self._stores:
            folder = store_folder(trainer, self.cache_dir, name)
            sweep = _this_sweep() if folder is None else None
            if sweep is not None and (sweep, name) in _SWEEP_STORES:  # an earlier job of this multirun's
                store = _SWEEP_STORES[(sweep, name)]
                store.hits = store.misses = 0
            else:
                store = FeatureStore(name, folder, self.dtype, trainer.global_rank, backbone=backbone)
                if sweep is not None:
                    _SWEEP_STORES[(sweep, name)] = store
            self._stores[name] = store
        store = self._stores[name]
        store.refresh()  # what the other ranks have written since
        return store

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
            computed: dict[str, int] = {}
            for store in self._stores.values():
                computed[store.backbone] = computed.get(store.backbone, 0) + store.misses
            log.info(
                "Frozen-feature cache (%s): %d of %d image lookups served from stored features, %d computed%s",
                phase,
                hits,
                lookups,
                lookups - hits,
                f" (per backbone: {', '.join(f'{b} {n}' for b, n in computed.items())})" if len(computed) > 1 else "",
            )
