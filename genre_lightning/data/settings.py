"""The data settings as typed records: what decides the scan and the split (``IntakeSettings``) and how
batches are loaded (``LoaderSettings``).

The config keeps its flat keys (``data.root``, ``data.folds``, ``data.batch_size``, ...; see
conf/data/posters.yaml): ``data_settings`` sorts them into the two records, checking each value where
it is made, so a bad one is a one-line ``ConfigError`` naming its key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from genre_lightning.data.duplicates import check_duplicate_options
from genre_lightning.data.folds import CrossValidation
from genre_lightning.data.stratify import check_fractions
from genre_lightning.utils.errors import ConfigError
from genre_lightning.utils.plain_values import to_plain

DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
# data.folds, data.fold, data.cv_test_fraction, data.cv_val_fraction: IntakeSettings.cv
CV_KEYS = ("folds", "fold", "cv_test_fraction", "cv_val_fraction")


@dataclass(frozen=True)
class IntakeSettings:
    """What decides the scan and the split (``data/intake.py``): the ``data.*`` keys of the same names;
    ``cv`` is ``data.folds``, ``data.fold`` and ``data.cv_*`` (None without ``data.folds``)."""

    classes: Sequence[str]
    root: str | Path | None = None
    annotations: str | Path | None = None
    split_file: str | Path | None = None
    shards: str | None = None  # LitData shards (genre-data shards=<dir>): their own split, read instead of files
    fractions: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    split_seed: int = 0
    task: str = "single"
    duplicates: Mapping[str, Any] | None = None
    min_image_side: int = 1
    cv: CrossValidation | None = None
    demo: Mapping[str, Any] | None = None  # draw synthetic posters into root first (data=demo)
    verify_workers: int | None = None  # decoding processes (None: every usable CPU)
    verify_cache: str | Path | None = None

    def __post_init__(self) -> None:
        if not self.classes:
            raise ConfigError("data.classes", self.classes, "a non-empty list of genre names")
        sources = self.demo or self.split_file or self.annotations or self.shards
        if not sources and not (self.root and Path(self.root).is_dir()):
            raise ConfigError(
                "data.root",
                self.root,
                "an existing folder with one sub-folder per genre "
                "(or data.annotations=<csv>, data.split_file=<annotations.csv>, data.shards=<dir>, or data=demo)",
            )
        # here, not after a scan of every file (also for genre-data); checks data.task too
        check_duplicate_options(self.duplicates, self.task)
        if self.shards and self.cv is not None:  # the shards hold the one split they were written with
            raise ConfigError("data.folds", self.cv.folds, "null with data.shards (shards carry one fixed split)")
        object.__setattr__(self, "classes", list(self.classes))
        object.__setattr__(self, "fractions", check_fractions(self.fractions or DEFAULT_FRACTIONS))

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"


@dataclass(frozen=True)
class LoaderSettings:
    """How the data module loads batches: the ``data.*`` keys of the same names."""

    batch_size: int = 32
    eval_batch_size: int | None = None  # None: batch_size
    # Training loads micro-batches and the trainer accumulates their gradients into one step of
    # batch_size images: the same step (exactly so while BatchNorm statistics are frozen), in less memory.
    micro_batch_size: int | None = None  # None: batch_size
    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    augment: Mapping[str, Any] | None = None  # timm create_transform training options; None: no augmentation
    cache_dir: str | None = None  # decoded-image cache (opt-in)
    balanced_sampling: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("data.batch_size", self.batch_size, "a positive integer")
        micro = self.micro_batch_size
        if micro is not None and (micro < 1 or self.batch_size % micro):
            raise ConfigError("data.micro_batch_size", micro, f"null or a divisor of data.batch_size={self.batch_size}")
        object.__setattr__(self, "micro_batch_size", micro or self.batch_size)
        object.__setattr__(self, "eval_batch_size", self.eval_batch_size or self.batch_size)
        object.__setattr__(self, "persistent_workers", self.persistent_workers and self.num_workers > 0)


def data_settings(classes: Sequence[str], keys: Mapping[str, Any]) -> tuple[IntakeSettings, LoaderSettings]:
    """The flat ``data.*`` keys (``classes`` and ``keys``), each in the record it belongs to; a key of
    neither is a one-line error naming it."""
    keys = to_plain(dict(keys))
    if "verify_threads" in keys:  # 0.2's name of verify_workers (saved configs)
        threads = keys.pop("verify_threads")
        keys["verify_workers"] = keys.get("verify_workers") or threads
    cv_keys = {k: keys.pop(k) for k in CV_KEYS if k in keys}
    intake_names = {f.name for f in fields(IntakeSettings)} - {"classes", "cv"}
    loader_names = {f.name for f in fields(LoaderSettings)}
    unknown = sorted(set(keys) - intake_names - loader_names)
    if unknown:
        valid = sorted(intake_names | loader_names | set(CV_KEYS) | {"classes", "output_dir"})
        raise ConfigError(f"data.{unknown[0]}", keys[unknown[0]], f"one of the data keys {valid}")
    cv = CrossValidation.from_config(
        cv_keys.get("folds"),
        cv_keys.get("fold"),
        cv_keys.get("cv_test_fraction", 0.0),
        cv_keys.get("cv_val_fraction", 0.15),
    )
    intake = IntakeSettings(classes=to_plain(classes), cv=cv, **{k: v for k, v in keys.items() if k in intake_names})
    return intake, LoaderSettings(**{k: v for k, v in keys.items() if k in loader_names})
