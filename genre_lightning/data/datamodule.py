"""LightningDataModule: prepare the split once (global rank 0), then every rank reads that file."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Sampler, WeightedRandomSampler

from genre_lightning.data.annotations import ANNOTATIONS_FILE, fold_digest, genre_rows, read_split_file, split_digest
from genre_lightning.data.dataset import PosterDataset, build_transforms, collate_posters
from genre_lightning.data.demo import ensure_demo_posters
from genre_lightning.data.folds import CrossValidation
from genre_lightning.data.image_cache import DecodedImageCache, cover_side
from genre_lightning.data.intake import prepare_annotations
from genre_lightning.data.settings import data_settings
from genre_lightning.data.shards import ShardDataset, copy_shards_split, shards_split
from genre_lightning.data.stratify import HOLDOUT, SPLIT_NAMES
from genre_lightning.utils.errors import ConfigError
from genre_lightning.utils.plain_values import to_plain

log = logging.getLogger(__name__)

# The training images with the eval transform, for genre-eval split=train.
EVAL_TRAIN = "train_eval"


def balanced_weights(dataset: PosterDataset, num_classes: int) -> torch.Tensor:
    """Sampling weights that draw every genre about equally often.

    Single-label: 1 / the count of the image's genre. Multi-label (``multi_hot``): the mean, over the
    image's genres, of 1 / that genre's count. (Weighing by the count of the whole label set would
    do little with dozens of genres, where most combinations occur once or twice: rare genres would
    stay rare.)"""
    if not dataset.multi_hot:
        targets = torch.tensor(dataset.targets)
        return 1.0 / torch.bincount(targets, minlength=num_classes).clamp(min=1)[targets]
    counts = torch.zeros(num_classes)
    for genres in dataset.label_sets:
        counts[list(genres)] += 1
    inverse = 1.0 / counts.clamp(min=1)
    return torch.tensor([float(inverse[list(genres)].mean()) for genres in dataset.label_sets])


class PosterDataModule(LightningDataModule):
    """Genre posters from folders (``root``) or a CSV (``annotations``), split 70/15/15, or into
    ``folds`` cross-validation folds of which ``fold`` is this run's test split (``data/folds.py``).

    ``keys``: the other ``data.*`` config keys (``root=``, ``batch_size=``, ...), each a field of
    ``IntakeSettings`` (the scan and the split; ``folds``, ``fold`` and ``cv_*`` make its ``cv``) or of
    ``LoaderSettings`` (the batches), in ``data/settings.py``; a key of neither is a ``ConfigError``.
    ``self.intake`` and ``self.loading`` hold them, checked. ``test_split``: the split ``trainer.test``
    evaluates (genre-eval's ``split=``). ``required_splits``: splits that must hold posters (checked in
    ``setup``, before any training step), e.g. ``test`` for genre-train with ``test=true``.

    The model hands over its timm data config with :meth:`set_data_config`; the data module
    never imports the model.
    """

    def __init__(
        self,
        classes: Sequence[str],
        output_dir: str | Path,
        *,
        test_split: str = "test",
        required_splits: Sequence[str] = (),
        **keys: Any,
    ) -> None:
        super().__init__()
        self.intake, self.loading = data_settings(classes, keys)
        if test_split not in SPLIT_NAMES:
            raise ConfigError("split", test_split, f"one of {list(SPLIT_NAMES)}")
        self.output_dir = Path(output_dir)
        self.test_split = test_split  # genre-eval can evaluate the val (or train) split instead
        self.required_splits = tuple(required_splits)
        self.data_config: dict[str, Any] | None = None
        self._demo_ready = False
        self._prepared = False  # prepare_data already ran in this process (genre-train runs it before DDP starts)
        self.frame: pd.DataFrame | None = None
        self.datasets: dict[str, PosterDataset] = {}
        # Only global rank 0 scans and splits; the run folder is shared by all ranks.
        self.prepare_data_per_node = False

    @property
    def classes(self) -> list[str]:
        return self.intake.classes

    @property
    def task(self) -> str:
        return self.intake.task

    @property
    def cv(self) -> CrossValidation | None:
        return self.intake.cv

    @property
    def split_file(self) -> str | Path | None:
        return self.intake.split_file

    @property
    def augment(self) -> dict[str, Any] | None:
        return self.loading.augment

    @property
    def num_workers(self) -> int:
        """Loader processes (also what the linear probe's feature pass uses: ``training/probe.py``)."""
        return self.loading.num_workers

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per optimizer step (Lightning's ``accumulate_grad_batches``)."""
        return self.loading.batch_size // self.loading.micro_batch_size

    @property
    def annotations_path(self) -> Path:
        return self.output_dir / ANNOTATIONS_FILE

    def set_data_config(self, data_config: Mapping[str, Any]) -> None:
        """Input size, interpolation, mean and std, resolved from the backbone by the model."""
        self.data_config = dict(data_config)

    def prepare_data(self) -> None:
        if self._prepared:
            return
        if self.intake.shards:
            self._prepare_from_shards()
            self._prepared = True
            return
        if self.intake.demo is not None and not self._demo_ready:
            root = ensure_demo_posters(self.intake.root, **self.intake.demo)
            self._demo_ready = True
            log.warning(
                "DEMO DATA: %s holds SYNTHETIC posters drawn by genre_lightning.data.demo, not real movie posters. "
                "To train on real posters: genre-train data=posters data.root=/path/to/posters "
                "(one folder per genre: %s).",
                root,
                ", ".join(self.classes),
            )
        prepare_annotations(self.output_dir, self.intake)
        self._prepared = True

    def _prepare_from_shards(self) -> None:
        """The shards' own split becomes the run's (a given split file or an existing one must be it)."""
        shards = self.intake.shards
        theirs = split_digest(read_split_file(shards_split(shards), self.classes, "data.shards", False))
        for key, other in (("data.split_file", self.split_file), ("annotations", self.annotations_path)):
            if other and Path(other).is_file() and split_digest(self._read_split(other)) != theirs:
                raise ConfigError(key, str(other), f"the split of the shards in {shards}")
        if not self.annotations_path.is_file():
            copy_shards_split(shards, self.annotations_path)

    def _read_split(self, path: str | Path) -> pd.DataFrame:
        return read_split_file(path, self.classes, key="annotations", check_files=not self.intake.shards)

    def setup(self, stage: str | None = None) -> None:
        if self.data_config is None:
            raise RuntimeError("PosterDataModule.set_data_config() must be called with the model's data config")
        if self.frame is None:
            self.frame = self._read_split(self.annotations_path)
        self._check_required_splits()
        train_tf, eval_tf = build_transforms(self.data_config, self.augment)
        self.eval_transform = eval_tf
        image_cache = None
        if self.loading.cache_dir:
            side = cover_side(self.data_config, self.augment is not None)
            image_cache = DecodedImageCache(self.loading.cache_dir, side)
        label_index = {c: i for i, c in enumerate(self.classes)}
        # Multi-genre items (duplicate policy multi_genre) also carry every genre they count as; for
        # data.task=multilabel those genres are the targets.
        multilabel = self.task == "multilabel"
        multi_genre = multilabel or self.frame["labels"].str.contains("|", regex=False).any()
        datasets = {"train": ("train", train_tf), "val": ("val", eval_tf), "test": ("test", eval_tf)}
        if self.test_split == "train":  # evaluating the training images: without the augmentation
            datasets[EVAL_TRAIN] = ("train", eval_tf)
        if self.test_split == HOLDOUT:  # a cross-validation's fixed test part (genre-eval split=holdout)
            datasets[HOLDOUT] = (HOLDOUT, eval_tf)
        for name, (split, transform) in datasets.items():
            rows = self.frame[self.frame["split"] == split]
            label_sets = [[label_index[x] for x in s.split("|")] for s in rows["labels"]] if multi_genre else None
            shards = self.intake.shards
            source = (ShardDataset, shards_split(shards).parent / split) if shards else (PosterDataset,)
            self.datasets[name] = source[0](
                *source[1:],
                list(rows["file_path"]),
                [label_index[x] for x in rows["label"]],
                transform,
                label_sets,
                num_classes=len(self.classes),
                keys=[sha or path for sha, path in zip(rows["sha256"], rows["file_path"], strict=True)],
                image_cache=None if shards else image_cache,
                multi_hot=multilabel,
            )

    def _check_required_splits(self) -> None:
        """A split the run needs but that holds no poster stops here, before training (not in trainer.test)."""
        counts = self.frame["split"].value_counts()
        for split in self.required_splits:
            if counts.get(split, 0):
                continue
            if self.cv is not None and split == "test":
                raise ConfigError(
                    "test",
                    True,
                    f"false for data.fold={self.cv.fold} without a fixed test part: every poster trains it "
                    "(data.cv_test_fraction > 0 keeps a test part out of every fold)",
                )
            fractions = {s: round(v, 6) for s, v in self.intake.fractions.items()}
            raise ConfigError(
                "data.fractions",
                fractions,
                f"fractions that leave at least one poster in the {split} split"
                + (" (or test=false)" if split == "test" else ""),
            )

    def cross_validation(self) -> dict[str, Any] | None:
        """This run's place in a cross-validation (for metrics.json and genre-report), or None."""
        if self.cv is None:
            return None
        state = self.state_dict()
        return {
            "folds": self.cv.folds,
            "fold": self.cv.fold,
            "fold_digest": state["fold_digest"],
            "cv_test_fraction": self.cv.test_fraction,
            "cv_val_fraction": self.cv.val_fraction,
        }

    def has_posters(self, split: str) -> bool:
        """Whether ``split`` holds any poster (the refit, ``data.fold=all``, has no validation split)."""
        return split in self.datasets and len(self.datasets[split]) > 0

    def evaluation_dataset(self, split: str) -> PosterDataset:
        """The images of ``split`` through the evaluation transform (no augmentation, even for train):
        what a linear probe fits on (``probe.LinearProbeHead``)."""
        dataset = copy.copy(self.datasets[split])
        dataset.transform = self.eval_transform
        return dataset

    def train_label_counts(self) -> tuple[list[int], int]:
        """Training images per genre (an image counts for each of its genres under ``task=multilabel``),
        and training images in all: what ``model.pos_weight`` is computed from."""
        if self.frame is None:
            self.frame = self._read_split(self.annotations_path)
        train = self.frame[self.frame["split"] == "train"]
        counts = genre_rows(train, self.task)["label"].value_counts()
        return [int(counts.get(c, 0)) for c in self.classes], len(train)

    def _loader(self, split: str, shuffle: bool, sampler: Sampler | None = None) -> DataLoader:
        dataset = self.datasets[split]
        if split != "train" and self.trainer is not None and self.trainer.world_size > 1:
            # Evaluation under DDP: shard without padding, so every image is counted exactly once
            # (Lightning's default DistributedSampler repeats images to even out the shards).
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=False
            )
        return DataLoader(
            dataset,
            batch_size=self.loading.micro_batch_size if split == "train" else self.loading.eval_batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.loading.num_workers,
            pin_memory=self.loading.pin_memory,
            persistent_workers=self.loading.persistent_workers,
            collate_fn=collate_posters,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        if not self.loading.balanced_sampling:
            return self._loader("train", shuffle=True)
        weights = balanced_weights(self.datasets["train"], len(self.classes))
        # Its own generator, seeded alike on every rank: under DDP each rank takes its shard of one
        # draw, which the global RNG (advanced differently by each rank's augmentation) would not give.
        generator = torch.Generator().manual_seed(torch.initial_seed())
        sampler = WeightedRandomSampler(weights, len(weights), generator=generator)
        return self._loader("train", shuffle=False, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(EVAL_TRAIN if self.test_split == "train" else self.test_split, shuffle=False)

    # Stored in checkpoints, so a resume on a different split is caught instead of leaking test data.
    # Also the training augmentation, so genre-eval shows training samples as the model saw them.
    def state_dict(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "split_digest": split_digest(self.frame) if self.frame is not None else None,
            # The fold assignment's own fingerprint: the fold runs of one cross-validation share it.
            "fold_digest": fold_digest(self.frame) if self.frame is not None else None,
            "folds": self.cv.folds if self.cv is not None else None,
            "fold": self.cv.fold if self.cv is not None else None,
            "augment": to_plain(self.augment),
            # The intake's size rule, which prediction then applies too (inference/predictor.py).
            "min_image_side": self.intake.min_image_side,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        expected = state_dict.get("split_digest")
        if self.frame is None:
            self.frame = self._read_split(self.annotations_path)
        if expected and expected != split_digest(self.frame):
            raise ConfigError(
                "data.split_file",
                self.split_file,
                f"the split the checkpoint was trained on (pass data.split_file=<that run's {ANNOTATIONS_FILE}>)",
            )
