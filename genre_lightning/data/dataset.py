"""The poster dataset, its batches, and the transforms taken from the backbone's timm data config."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from timm.data import create_transform
from torch.utils.data import Dataset, default_collate

from genre_lightning.data.image_cache import DecodedImageCache
from genre_lightning.data.imageio import UnreadableImage, check_size, read_rgb, unexpected_error_reason

# The keys of timm's data config that create_transform understands.
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def build_transforms(data_config: Mapping[str, Any], augment: Mapping[str, Any] | None) -> tuple[Callable, Callable]:
    """(train, eval) transforms. ``augment`` holds timm ``create_transform`` training options;
    ``None`` means no augmentation: training then sees exactly the eval transform."""
    base = {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items() if k in DATA_CONFIG_KEYS}
    eval_transform = create_transform(**base, is_training=False)
    if augment is None:
        return eval_transform, eval_transform
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in augment.items()}
    train_transform = create_transform(
        **{k: v for k, v in base.items() if k not in ("crop_pct", "crop_mode")}, is_training=True, **options
    )
    return train_transform, eval_transform


class PosterDataset(Dataset):
    """Images and integer labels. An image that fails to decode yields ``(index, reason)``
    instead of raising, so one bad file cannot stop an epoch; ``collate_posters`` drops it
    and lists it in the batch's ``failed``.

    ``label_sets`` (optional): every genre an item counts as at evaluation, returned as a
    multi-hot ``label_set`` (the ``multi_genre`` duplicate policy). With ``multi_hot`` they are the
    target itself (``data.task=multilabel``): a float 0/1 vector per image, what
    ``BCEWithLogitsLoss`` takes; ``targets`` then stays the primary genre (for sampling and
    figures). ``keys`` (content hashes)
    name each image for the caches; ``image_cache`` serves already-decoded pixels. ``min_side``
    (prediction: the intake's ``data.min_image_side``) refuses a smaller picture as the intake does.
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: Sequence[int],
        transform: Callable,
        label_sets: Sequence[Sequence[int]] | None = None,
        num_classes: int = 0,
        keys: Sequence[str] | None = None,
        image_cache: DecodedImageCache | None = None,
        multi_hot: bool = False,
        min_side: int | None = None,
    ) -> None:
        if multi_hot and label_sets is None:
            raise ValueError("multi_hot targets need label_sets")
        self.multi_hot = multi_hot
        self.paths = list(paths)
        self.targets = list(targets)
        self.transform = transform
        self.label_sets = label_sets
        self.num_classes = num_classes
        self.keys = list(keys) if keys is not None else [str(p) for p in self.paths]
        self.image_cache = image_cache
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.paths)

    def read_image(self, index: int) -> Image.Image:
        """The decoded picture of item ``index`` (``ShardDataset`` reads it from a shard instead)."""
        if self.image_cache is not None:
            return self.image_cache.load(self.paths[index], self.keys[index])
        return read_rgb(self.paths[index])

    def __getitem__(self, index: int) -> dict[str, Any] | tuple[int, str]:
        try:
            image = check_size(self.read_image(index), self.min_side)
        except UnreadableImage as err:
            return index, str(err)
        except Exception as err:  # last resort: one file a decoder chokes on must not stop an epoch
            return index, unexpected_error_reason(err)
        item = {"image": self.transform(image), "target": self.targets[index], "index": index, "key": self.keys[index]}
        if self.label_sets is not None:
            item["label_set"] = torch.zeros(self.num_classes, dtype=torch.bool)
            item["label_set"][list(self.label_sets[index])] = True
            if self.multi_hot:
                item["target"] = item.pop("label_set").float()
        return item


def collate_posters(items: list[dict[str, Any] | tuple[int, str]]) -> dict[str, Any]:
    """Stack the good items; list the failed ones as ``(dataset index, reason)``."""
    good = [item for item in items if isinstance(item, dict)]
    failed = [item for item in items if not isinstance(item, dict)]
    if good:
        batch = default_collate(good)
    else:
        batch = {
            "key": [],
            "image": torch.empty(0),
            "target": torch.empty(0, dtype=torch.long),
            "index": torch.empty(0, dtype=torch.long),
        }
    batch["failed"] = failed
    return batch
