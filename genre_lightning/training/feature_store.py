"""Stores of frozen-backbone features: rows by image key, in memory or as memory-mapped parts on disk
(the format and the sharing between ranks: ``training/feature_cache.py``'s module docstring), and a
group of stores, one per backbone of a multi-backbone network."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Trainer

from genre_lightning.data.image_cache import cache_key
from genre_lightning.utils.errors import ConfigError

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


def store_keys(keys: Sequence[str]) -> list[str]:
    """The names a store files images under: a path key is stamped with its size and mtime (see cache_key)."""
    return [cache_key(key, key) for key in keys]
