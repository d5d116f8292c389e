"""Build an ensemble checkpoint (``genre-ensemble``): several checkpoints of one split as one model.

Checks that the members were trained on one split with the same genres, records each member's
network settings, copies their weights into one ``GenreClassifier`` whose network is an
``EnsembleNet``, and saves it beside a copy of the members' ``annotations.csv``. The checkpoint is
a model like any other: genre-eval, genre-predict, genre-export and the Predictor take it.

The fold runs of one cross-validation are the one exception to "one split": their splits differ, but
they share a fold assignment (its digest is in every fold checkpoint). Their ensemble is the final
model of a cross-validation; every poster of the folds trained some member, so its split is that of
the refit: the folds are ``train`` and only the fixed test part (``data.cv_test_fraction``), if any,
is ``test``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning
import torch

from genre_lightning.data.annotations import fold_digest, read_split_file, split_digest
from genre_lightning.data.folds import ALL_FOLDS
from genre_lightning.data.split_choice import ANNOTATIONS_FILE, checkpoint_split
from genre_lightning.data.stratify import HOLDOUT
from genre_lightning.models.checkpoint_io import PROVENANCE_KEY, datamodule_state, load_module, read_checkpoint
from genre_lightning.models.ensemble import ENSEMBLE_BACKBONE, MEMBER_KEYS, PIXEL_KEYS
from genre_lightning.training.module import GenreClassifier
from genre_lightning.utils.csvio import write_csv
from genre_lightning.utils.errors import ConfigError

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "ensemble.ckpt"


def member_spec(model: GenreClassifier) -> dict[str, Any]:
    """What an ensemble records of a member: its network's hyper-parameters, resolved data config and
    temperature (so the ensemble averages the members' calibrated probabilities)."""
    spec = {key: model.hparams.get(key) for key in MEMBER_KEYS}
    spec["data_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in model.data_config.items()}
    spec["temperature"] = float(model.task.temperature)
    return spec


def build_ensemble(ckpt_paths: Sequence[str], output: Path, provenance: dict[str, Any] | None = None) -> Path:
    """Check the members, write the ensemble checkpoint to ``output`` and its split (the members', or
    for the folds of a cross-validation the refit's) into its run folder; return ``output``. ``provenance``
    (the environment and the command line, ``training/provenance.py``) goes under ``PROVENANCE_KEY``."""
    if isinstance(ckpt_paths, str) or len(ckpt_paths) < 2:
        raise ConfigError("ckpt_paths", ckpt_paths, "a list of at least two checkpoints, e.g. [a.ckpt,b.ckpt]")
    checkpoints = [read_checkpoint(path, key="ckpt_paths") for path in ckpt_paths]
    members = [load_module(GenreClassifier, checkpoint) for checkpoint in checkpoints]
    first = members[0]
    for path, member in zip(ckpt_paths, members, strict=True):
        if member.classes != first.classes:
            raise ConfigError("ckpt_paths", path, f"a checkpoint for {first.classes} (it has {member.classes})")
        if member.task.multilabel or member.hparams.get("members"):
            raise ConfigError("ckpt_paths", path, "a single-label genre-train checkpoint (no multi-label, no ensemble)")
    states = [datamodule_state(checkpoint) for checkpoint in checkpoints]
    one_split = _one_value([state.get("split_digest") for state in states])
    if not one_split and not _one_value([state.get("fold_digest") for state in states]):
        raise ConfigError(
            "ckpt_paths",
            list(ckpt_paths),
            "checkpoints trained on one split (train them with one data.split_file), "
            "or the fold runs of one cross-validation (one data.folds sweep)",
        )
    for path, member in zip(ckpt_paths[1:], members[1:], strict=True):
        differs = [
            f"{k} {member.data_config.get(k)} vs {first.data_config.get(k)}"
            for k in PIXEL_KEYS
            if member.data_config.get(k) != first.data_config.get(k)
        ]
        if differs:  # its images are converted from the first member's, not decoded for it afresh
            log.warning(
                "%s resizes posters differently from %s (%s): the ensemble feeds it the first member's "
                "pixels, converted; train members with the same model.data_config for an exact ensemble",
                path, ckpt_paths[0], ", ".join(differs),
            )  # fmt: skip
    split = checkpoint_split(ckpt_paths[0])
    if split is None:
        raise ConfigError("ckpt_paths", ckpt_paths[0], f"a checkpoint with its run's {ANNOTATIONS_FILE} beside it")
    ensemble = GenreClassifier(
        backbone=ENSEMBLE_BACKBONE,
        classes=first.classes,
        members=[member_spec(m) for m in members],
        channels_last=bool(first.hparams.channels_last),
    )
    for target, member in zip(ensemble.net.members, members, strict=True):
        target.net.load_state_dict(member.net.state_dict())
    output.parent.mkdir(parents=True, exist_ok=True)
    run_folder = output.parent.parent
    if one_split:
        shutil.copyfile(split, run_folder / ANNOTATIONS_FILE)
        state = states[0] or None
    else:
        state = _refit_split(split, first.classes, states, run_folder / ANNOTATIONS_FILE)
        log.info(
            "Fold ensemble (folds %s of one cross-validation): %s",
            ", ".join(str(s.get("fold")) for s in states),
            f"tested on the {state['test_posters']} posters of the fixed test part"
            if state["test_posters"]
            else "every poster trained a member, so nothing is left to test it on (data.cv_test_fraction=0)",
        )
    torch.save(
        {
            "state_dict": ensemble.state_dict(),
            "hyper_parameters": dict(ensemble.hparams),
            "pytorch-lightning_version": lightning.__version__,
            "PosterDataModule": state,
            "ensemble_members": [str(Path(p).resolve()) for p in ckpt_paths],
            **({PROVENANCE_KEY: provenance} if provenance else {}),
        },
        output,
    )
    log.info("Ensemble of %d checkpoints written to %s", len(members), output)
    return output


def _one_value(values: Sequence[Any]) -> bool:
    return len(set(values)) == 1 and values[0] is not None


def _refit_split(members_split: Path, classes: Sequence[str], states: Sequence[dict], target: Path) -> dict[str, Any]:
    """The split of an ensemble of fold runs (the refit's: folds train, the fixed test part test),
    written to ``target``; the data-module state its checkpoint records."""
    frame = read_split_file(members_split, classes)
    frame["split"] = ["test" if fold == HOLDOUT else "train" for fold in frame["fold"]]
    write_csv(frame, target)
    return {
        **states[0],
        "split_digest": split_digest(frame),
        "fold_digest": fold_digest(frame),
        "fold": ALL_FOLDS,
        "test_posters": int((frame["split"] == "test").sum()),
    }


def ensemble_summary(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What genre-ensemble adds to metrics.json: the members, and the cross-validation they belong to."""
    state = datamodule_state(checkpoint)
    summary: dict[str, Any] = {"ensemble_members": list(checkpoint.get("ensemble_members") or [])}
    if state.get("fold_digest"):
        summary["cross_validation"] = {
            "folds": state.get("folds"),
            "fold": state.get("fold"),
            "fold_digest": state.get("fold_digest"),
        }
    return summary
