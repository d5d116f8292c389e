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
no hash), so changed weights, transforms or images never hit stale entries. A model of several
backbones (``model.backbone=[a,b]``) has one store per backbone, each named as that backbone's own
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
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from lightning.pytorch import Callback, LightningModule, Trainer
from timm.layers import DropBlock2d, DropPath

from genre_lightning.data.image_cache import cache_key
from genre_lightning.models.multi_backbone import MultiBackboneNet
from genre_lightning.utils.errors import ConfigError

log = logging.getLogger(__name__)

FEATURE_DTYPES = ("float32", "float16")


def store_folder(trainer: Trainer, cache_dir: Path | None, name: str) -> Path | None:
    """Where store ``name`` lives: the cache folder if any; else, under DDP, the run folder (the
    ranks share it); else memory (None)."""
    if cache_dir is not None:
        return cache_dir / "features" / name
    if trainer.world_size > 1:
        return Path(trainer.default_root_dir) / "features" / name
    return None


class FeatureStore:
    """Pooled backbone features by image key, for one frozen backbone and one transform.

    ``folder`` None keeps every row in memory; otherwise rows go to memory-mapped parts in
    ``folder`` (see the module docstring), ``chunk_rows`` at a time, and ``refresh`` reads the
    parts other ranks (or earlier runs) wrote."""

    def __init__(
        self,
        name: str,
        folder: Path | None = None,
        dtype: str = "float32",
        rank: int = 0,
        chunk_rows: int = 4096,
        backbone: str = "",
    ) -> None:
        if dtype not in FEATURE_DTYPES:
            raise ConfigError("callbacks.feature_cache.dtype", dtype, f"one of {list(FEATURE_DTYPES)}")
        self.name, self.folder, self.dtype, self.rank, self.chunk_rows = name, folder, dtype, rank, chunk_rows
        self.backbone = backbone  # whose features these are, for the cache's report
        self.stages: set[str] = set()
        self.hits = self.misses = 0
        self._where: dict[str, tuple[int, int]] = {}  # key -> (part, row)
        self._parts: list[np.ndarray] = []
        self._read_parts: set[str] = set()
        self._pending: dict[str, np.ndarray] = {}
        self.refresh()

    def __len__(self) -> int:
        return len(self._where) + len(self._pending)

    def __contains__(self, key: str) -> bool:
        return key in self._where or key in self._pending

    def refresh(self) -> None:
        """Read the parts written since the last look (by other ranks, or earlier runs)."""
        if self.folder is None or not self.folder.is_dir():
            return
        for keys_file in sorted(self.folder.glob("part-*.keys")):
            if keys_file.name in self._read_parts:
                continue
            try:
                rows = np.load(keys_file.with_suffix(".npy"), mmap_mode="r")
                keys = keys_file.read_text().split()
            except (OSError, ValueError):  # a torn part from a crash: its rows are computed again
                continue
            self._read_parts.add(keys_file.name)
            if len(keys) != len(rows):
                continue
            self._add_part(keys, rows)

    def _add_part(self, keys: Sequence[str], rows: np.ndarray) -> None:
        part = len(self._parts)
        self._parts.append(rows)
        for row, key in enumerate(keys):
            self._where.setdefault(key, (part, row))

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """The stored features of ``keys`` (stored keys: see ``features``) as a float32 array."""
        return np.stack(
            [
                self._pending[k] if k in self._pending else self._parts[self._where[k][0]][self._where[k][1]]
                for k in keys
            ]
        ).astype(np.float32)

    def features(self, keys: Sequence[str], images: torch.Tensor, compute: Callable[..., torch.Tensor]):
        """Features for a batch: stored ones looked up, the rest computed (and stored).

        ``keys`` are the dataset's: content hashes, or file paths when the split file has none."""
        keys = store_keys(keys)
        missing = [i for i, key in enumerate(keys) if key not in self]
        if missing:
            computed = compute(images[missing]).detach().float().cpu().numpy()
            for i, row in zip(missing, computed, strict=True):
                self._pending[keys[i]] = row.astype(self.dtype)
            if len(self._pending) >= self.chunk_rows:
                self.flush()
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return torch.from_numpy(self.rows(keys)).to(images.device)

    def flush(self) -> None:
        """Write the rows computed since the last flush as one part (on disk: atomically)."""
        if not self._pending:
            return
        keys, rows = list(self._pending), np.stack(list(self._pending.values()))
        self._pending = {}
        if self.folder is None:
            self._add_part(keys, rows)
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = f"part-{self.rank}-{uuid.uuid4().hex[:12]}"
        with open(self.folder / f"{stem}.npy.tmp", "wb") as file:
            np.save(file, rows)
        (self.folder / f"{stem}.npy.tmp").replace(self.folder / f"{stem}.npy")
        (self.folder / f"{stem}.keys.tmp").write_text("\n".join(keys) + "\n")
        (self.folder / f"{stem}.keys.tmp").replace(self.folder / f"{stem}.keys")
        self._read_parts.add(f"{stem}.keys")
        self._add_part(keys, np.load(self.folder / f"{stem}.npy", mmap_mode="r"))

    save = flush  # the callback's name for it at epoch ends


class FeatureStoreGroup:
    """The stores of a several-backbone model, one per backbone (in the network's order), as one
    store of their concatenated rows: each backbone computes only the images its own store lacks
    (``compute(images, [index])``)."""

    def __init__(self, name: str, parts: Sequence[FeatureStore]) -> None:
        self.name, self.parts = name, list(parts)
        self.stages: set[str] = set()

    def __len__(self) -> int:
        return min(len(part) for part in self.parts)

    def __contains__(self, key: str) -> bool:
        return all(key in part for part in self.parts)

    def refresh(self) -> None:
        for part in self.parts:
            part.refresh()

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        return np.concatenate([part.rows(keys) for part in self.parts], axis=1)

    def features(self, keys: Sequence[str], images: torch.Tensor, compute: Callable[..., torch.Tensor]):
        return torch.cat(
            [
                part.features(keys, images, lambda x, index=index: compute(x, [index]))
                for index, part in enumerate(self.parts)
            ],
            dim=1,
        )

    def flush(self) -> None:
        for part in self.parts:
            part.flush()

    save = flush


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


def store_keys(keys: Sequence[str]) -> list[str]:
    """The names a store files images under: a path key is stamped with its size and mtime (see cache_key)."""
    return [cache_key(key, key) for key in keys]


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
        flip = pl_module.flip_averaged(stage)
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

    def _store(self, trainer: Trainer, backbone: str, fingerprint: str, data_config: dict, flip: bool) -> FeatureStore:
        config = {
            "backbone": backbone,
            "weights": fingerprint,
            "data_config": {k: str(v) for k, v in sorted(data_config.items())},
            "flip_averaged": flip,
        }
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
