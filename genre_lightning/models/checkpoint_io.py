"""Checkpoint files, read in one place: every command and the Python API load checkpoints here.

A checkpoint is loaded with ``weights_only=True`` (one that would run code when unpickled is
refused) and memory-mapped (its tensors stay on disk until they are copied into a network). Any
file that is not a genre-lightning checkpoint (a text file, a truncated download, a weights file)
is the same one-line ``ckpt_path=... is not valid`` error, whichever command read it.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from genre_lightning.utils.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

VALID = "a .ckpt file written by genre-train or genre-ensemble"
# The data module's checkpoint state (its class name, as Lightning stores it): split digest, augmentation.
DATAMODULE_KEY = "PosterDataModule"
# Where genre-train before 0.2 recorded the training augmentation.
LEGACY_TRAINING_DATA_KEY = "genre_lightning_training_data"
# Where a checkpoint records its origin: environment, program, overrides (training/provenance.py).
PROVENANCE_KEY = "genre_lightning"
# State that moved since a checkpoint was written: old name -> new name.
RENAMED_STATE = {"thresholds": "task.tuned_thresholds", "positive_weights": "task.positive_weights"}


def read_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """The checkpoint at ``path`` as a dict (tensors memory-mapped), or a one-line ``ConfigError`` naming ``key``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(key, str(path), f"an existing file: {VALID}")
    if not zipfile.is_zipfile(path):  # what torch.save writes (a text file, a truncated download are not)
        raise ConfigError(key, str(path), f"{VALID} (this file is not a torch checkpoint archive)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:  # it holds objects that would run code when loaded
        raise ConfigError(
            key, str(path), f"a checkpoint that loads with weights_only=True ({_first_line(err)})"
        ) from None
    except Exception as err:  # torch cannot read it at all: not a checkpoint (text, truncated, other format)
        raise ConfigError(key, str(path), f"{VALID} (torch cannot read it: {_first_line(err)})") from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= set(checkpoint):
        raise ConfigError(key, str(path), f"{VALID} (it has no state_dict and hyper_parameters)")
    return checkpoint


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:160]


def upgrade_state_dict(state_dict: dict[str, Any], defaults: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """A state dict in today's names: renamed entries moved, and entries added since (``defaults``:
    name -> the value a new model starts with) filled in, so older checkpoints load strictly."""
    for old, new in RENAMED_STATE.items():
        if old in state_dict and new not in state_dict:
            state_dict[new] = state_dict.pop(old)
    for name, value in defaults.items():
        state_dict.setdefault(name, value)
    return state_dict


def load_module(cls: type[T], checkpoint: Mapping[str, Any]) -> T:
    """A ``GenreClassifier`` (``cls``) from a checkpoint read by :func:`read_checkpoint`, in eval mode.

    The checkpoint holds every weight, so nothing is downloaded (``pretrained=False``, ``weights=None``)."""
    hparams = {**checkpoint["hyper_parameters"], "pretrained": False, "weights": None}
    model = cls(**hparams)
    model.load_state_dict(upgrade_state_dict(dict(checkpoint["state_dict"]), model.new_state_defaults()))
    return model.eval()


def datamodule_state(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """What the data module saved: the split's digest, the classes, the training augmentation."""
    state = checkpoint.get(DATAMODULE_KEY)
    return dict(state) if isinstance(state, Mapping) else {}


def training_augment(checkpoint: Mapping[str, Any], fallback: Any) -> Any:
    """The augmentation the checkpoint was trained with; ``fallback`` for a checkpoint that does not say."""
    for recorded in (checkpoint.get(DATAMODULE_KEY), checkpoint.get(LEGACY_TRAINING_DATA_KEY)):
        if isinstance(recorded, Mapping) and "augment" in recorded:
            return recorded["augment"]
    log.info(
        "The checkpoint does not record its training augmentation (written by an older genre-train): "
        "the training-samples figure uses data.augment=%s",
        fallback,
    )
    return fallback


def provenance(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """What a checkpoint records of its origin (empty for one written before genre-lightning 0.3)."""
    return dict(checkpoint.get(PROVENANCE_KEY) or {})


def file_digest(path: str | Path, length: int = 16) -> str:
    """The first ``length`` hex digits of the file's SHA-256: a checkpoint's identity (a changed file
    gets a new one)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]
