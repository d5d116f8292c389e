"""The teacher of a distilled run (``distill.teacher``): which checkpoint, whether it may teach this
run, and its logits for the posters the student trains on.

``distill.teacher`` is a checkpoint (``.ckpt``, also an ensemble checkpoint from ``genre-ensemble``)
or the folder of a cross-validation sweep (``genre-train -m ... data.folds=K data.fold=0,...``), in
which case fold ``k`` of the student learns from the sweep's fold-``k`` run: the same fold assignment
(the fold digest both record) means that teacher never saw the fold the student reports. Every
teacher is checked against the student's split before it teaches: the posters it trained on (its
run's ``annotations.csv``: split ``train`` or ``val``) must not include one the student reports on
(the student's ``test`` split), and its genres must be the student's.

The logits (the network's raw outputs, flip-averaged when the teacher uses flip TTA; softened later
by ``distill.temperature``) are computed once per poster and kept in a feature store named by the
checkpoint's content hash (``<data.cache_dir>/features/teacher-<sha>``), so later folds, trials and
reruns read them instead of running the teacher again.

It sits with genre-train because it joins two floors below it: inference's ``Predictor`` runs the
teacher, training's feature store keeps its logits.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from genre_lightning.data.annotations import ANNOTATIONS_FILE
from genre_lightning.data.dataset import build_transforms
from genre_lightning.inference.decode import decoded_batches
from genre_lightning.inference.predictor import Predictor
from genre_lightning.models.checkpoint_io import datamodule_state, file_digest, read_checkpoint
from genre_lightning.models.ensemble import ENSEMBLE_BACKBONE
from genre_lightning.training.distill import StudentSplit, TeacherFor
from genre_lightning.training.feature_cache import FrozenFeatureCache
from genre_lightning.training.feature_store import FeatureStore, store_keys
from genre_lightning.training.module import GenreClassifier
from genre_lightning.utils.errors import ConfigError

log = logging.getLogger(__name__)

KEY = "distill.teacher"
TEACHER_POSTERS = ("train", "val")  # what a run learned from: its fit, and its choice of C/epoch/T
VALID = "a checkpoint (.ckpt, an ensemble.ckpt) or the folder of a genre-train -m cross-validation sweep"


def resolve_teacher(spec: str, student: StudentSplit) -> Path:
    """The checkpoint that teaches this student: ``spec`` itself, or the fold run of a sweep folder."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(KEY, spec, f"{VALID} (no such file or folder)")
    if path.is_file():
        return path
    runs = _fold_runs(path)
    if not runs:
        raise ConfigError(KEY, spec, f"{VALID} (this folder holds no run with a metrics.json and a checkpoint)")
    if student.fold is None or student.fold == "all":
        raise ConfigError(
            KEY, spec, "a checkpoint (a sweep folder teaches a cross-validation run fold by fold; this run has "
            "no fold: for a refit, the genre-ensemble of the sweep's fold checkpoints)",
        )  # fmt: skip
    mine = [run for run in runs if run["fold"] == student.fold]
    if len(mine) != 1:
        found = sorted({str(run["fold"]) for run in runs})
        raise ConfigError(
            KEY, spec, f"a sweep with exactly one finished run of fold {student.fold} (folds found: {found}, "
            f"{len(mine)} of fold {student.fold})",
        )  # fmt: skip
    run = mine[0]
    if run["fold_digest"] != student.fold_digest:
        raise ConfigError(
            KEY, spec, f"a sweep with this run's fold assignment (fold digest {student.fold_digest}; the sweep's "
            f"is {run['fold_digest']}: train both with the same data.folds, data.split_seed and posters)",
        )  # fmt: skip
    return run["checkpoint"]


def _fold_runs(folder: Path) -> list[dict[str, Any]]:
    """The finished runs under a sweep folder: fold, fold digest and best checkpoint of each."""
    runs = []
    for metrics_file in sorted(folder.glob("*/metrics.json")):
        metrics = json.loads(metrics_file.read_text())
        cv = metrics.get("cross_validation") or {}
        checkpoint = metrics.get("best_ckpt_path") or metrics.get("test_ckpt_path")
        if not checkpoint or not Path(checkpoint).is_file():
            continue
        runs.append({"fold": cv.get("fold"), "fold_digest": cv.get("fold_digest"), "checkpoint": Path(checkpoint)})
    return runs


def teacher_split(checkpoint: Path) -> Path | None:
    """The ``annotations.csv`` of the teacher's run: beside the checkpoint (genre-ensemble) or its run folder."""
    for folder in (checkpoint.resolve().parent, checkpoint.resolve().parent.parent):
        if (folder / ANNOTATIONS_FILE).is_file():
            return folder / ANNOTATIONS_FILE
    return None


def check_teacher(spec: str, checkpoint: Path, student: StudentSplit) -> dict[str, Any]:
    """Refuse a teacher of other genres, or one that trained on a poster the student reports on;
    its checkpoint as read."""
    loaded = read_checkpoint(checkpoint, KEY)
    classes = list(loaded["hyper_parameters"]["classes"])
    if sorted(classes) != sorted(student.classes):
        raise ConfigError(KEY, spec, f"a teacher of this run's genres {student.classes} (it predicts {classes})")
    if loaded["hyper_parameters"].get("task", "single") != "single":
        raise ConfigError(KEY, spec, "a single-label teacher (this one is multi-label)")
    if student.test_keys:
        split = teacher_split(checkpoint)
        if split is None:
            raise ConfigError(
                KEY, spec, f"a teacher whose run folder holds its {ANNOTATIONS_FILE}, to check it never trained "
                "on this run's test posters",
            )  # fmt: skip
        frame = pd.read_csv(split)
        learned = frame[frame["split"].isin(TEACHER_POSTERS)]
        keys = learned["sha256"] if "sha256" in learned.columns else learned["file_path"]
        seen = len(student.test_keys & {str(k).lower() for k in keys})
        if seen:
            state = datamodule_state(loaded)
            raise ConfigError(
                KEY, spec, f"a teacher that never trained on the posters this run reports on: it trained on {seen} "
                f"of this run's {len(student.test_keys)} test posters (teacher fold {state.get('fold')}; this run's "
                f"fold {student.fold}): use the teacher of the same fold, or a CV sweep folder",
            )  # fmt: skip
    return loaded


class TeacherLogits:
    """A teacher checkpoint's raw logits per poster, computed once and kept in a feature store.

    A teacher with a linear head on its own network (a probe, a fine-tuned model) runs as training
    runs it: pooled features from the frozen-feature stores (``training/feature_cache.py``; a probe
    teacher's features are there already when its sweep used the same ``data.cache_dir``), then its
    head. An ensemble runs through the ``Predictor``.

    Args:
        checkpoint: the teacher's checkpoint file.
        classes: the student's genres: the logits' columns come in this order.
        cache_dir: ``data.cache_dir`` (None: in memory, for this run only).
        batch_size: images per teacher forward pass.
    """

    def __init__(
        self, checkpoint: Path, classes: Sequence[str], cache_dir: str | Path | None = None, batch_size: int = 32
    ) -> None:
        self.checkpoint = checkpoint
        self.sha256 = file_digest(checkpoint, 64)
        self.classes = list(classes)
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        name = f"teacher-{self.sha256[:16]}"
        folder = Path(cache_dir) / "features" / name if cache_dir else None
        self.store = FeatureStore(name, folder)
        self.computed = self.cached = 0  # poster contents whose logits were computed / read from the cache

    def logits(self, paths: Sequence[str], keys: Sequence[str]) -> np.ndarray:
        """``(len(paths), genres)`` logits in the student's genre order; NaN rows for unreadable files."""
        stored = store_keys(keys)
        # one per poster content (a copy filed under two genres appears twice)
        missing = list({key: i for i, key in enumerate(stored) if key not in self.store}.values())
        if missing:
            self._compute([paths[i] for i in missing], [keys[i] for i in missing])
        contents = len(set(stored))
        self.cached = contents - len(missing)
        log.info(
            "Teacher %s: logits of %d posters (%d contents), %d from the cache, %d computed now",
            self.checkpoint, len(keys), contents, self.cached, len(missing),
        )  # fmt: skip
        rows = np.full((len(keys), len(self.classes)), np.nan, dtype=np.float32)
        present = [i for i, key in enumerate(stored) if key in self.store]
        if present:
            rows[present] = self.store.rows([stored[i] for i in present])
        return rows

    def _compute(self, paths: list[str], keys: list[str]) -> None:
        module = GenreClassifier.from_checkpoint(self.checkpoint)
        order = [module.classes.index(c) for c in self.classes]
        if module.hparams.backbone == ENSEMBLE_BACKBONE or not isinstance(module.net.get_classifier(), nn.Linear):
            predictor = Predictor.from_checkpoint(self.checkpoint, backend="torch")
            self._run(paths, keys, predictor.eval_transform, lambda _, x: predictor.logits(x)[:, order])
            return
        # One process outside a Trainer: what the store's folder and writer need of one.
        trainer = SimpleNamespace(world_size=1, global_rank=0)
        cache = FrozenFeatureCache(str(self.cache_dir) if self.cache_dir else None)
        features, flip = cache.store_for(trainer, module, "val"), module.flip_averaged("val")
        head = lambda rows: module.classify_features(rows)[:, order]  # noqa: E731
        stored = store_keys(keys)
        ready = [i for i, key in enumerate(stored) if key in features]
        if ready:  # the teacher's features are stored already: its head alone
            log.info("Teacher: backbone features of %d posters from the feature cache", len(ready))
            rows = torch.from_numpy(features.rows([stored[i] for i in ready]))
            with torch.inference_mode():
                self.store.features([keys[i] for i in ready], rows, head)
            self.computed += len(ready)
        rest = sorted(set(range(len(keys))) - set(ready))

        def through_features(batch_keys: list[str], images: torch.Tensor) -> torch.Tensor:
            compute = lambda x, parts=None: module.backbone_features(x, flip, parts)  # noqa: E731
            return head(features.features(batch_keys, images, compute))

        transform = build_transforms(module.data_config, None)[1]
        self._run([paths[i] for i in rest], [keys[i] for i in rest], transform, through_features)
        features.flush()

    def _run(self, paths: list[str], keys: list[str], transform, logits_of) -> None:
        """Decode ``paths`` and store ``logits_of(keys, images)`` of the readable ones."""
        position = 0
        with torch.inference_mode():
            for batch in decoded_batches(paths, transform, self.batch_size, workers=1):
                chunk = keys[position : position + len(batch.paths)]
                position += len(batch.paths)
                if batch.index.numel():
                    readable = [chunk[i] for i in batch.index.tolist()]
                    self.store.features(readable, batch.images, lambda x, k=readable: logits_of(k, x))
                self.computed += int(batch.index.numel())
        self.store.flush()


def teacher_for(spec: str, cache_dir: str | Path | None = None) -> TeacherFor:
    """What ``Distillation`` calls once the student's split is known: the checked teacher's logits
    function and its record (the spec, the checkpoint used, its SHA-256, the fold)."""

    def prepare(student: StudentSplit):
        checkpoint = resolve_teacher(str(spec), student)
        loaded = check_teacher(str(spec), checkpoint, student)
        teacher = TeacherLogits(checkpoint, student.classes, cache_dir)
        record = {
            "teacher": str(spec),
            "checkpoint": str(checkpoint.resolve()),
            "sha256": teacher.sha256,
            "teacher_backbone": loaded["hyper_parameters"].get("backbone"),
            "teacher_fold": datamodule_state(loaded).get("fold"),
        }

        def logits(paths, keys):
            rows = teacher.logits(paths, keys)
            record["logits_computed"] = teacher.computed
            record["logits_cached"] = teacher.cached
            return rows

        return logits, record

    return prepare
