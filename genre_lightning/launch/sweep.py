"""Multiruns: one split for the whole sweep, made once before any job starts.

:class:`SharedSplit` is a Hydra callback (``hydra.callbacks`` in conf/train.yaml). Its
``on_multirun_start`` runs once, in the process that launches the sweep (the login node under
Slurm), before the sweeper starts any job. It runs the data module's ``prepare_data`` with the
sweep folder as output folder: demo posters if asked for, scan, verify, split. The sweep folder
then holds ``annotations.csv``, ``data_report.json`` and ``split_settings.json`` (the data settings
that made the split). A job uses that split when its own split settings are the same, so
``-m model=a,b seed=1,2,3`` compares all jobs on one test set, while ``-m data.split_seed=0,1``
still gets one split per seed.

With ``data.folds=K`` the shared file is the fold assignment (its ``fold`` column): ``data.fold`` is
not a split setting, so every job of ``-m data.fold=0,1,2,3,4 model.optimizer.lr=1e-3,3e-4`` reads
the same folds and derives its own train/val/test from them (``data/folds.py``); a sweep over
``data.folds`` or ``data.split_seed`` makes one assignment per job, as above.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, read_write

from genre_lightning.data.annotations import ANNOTATIONS_FILE
from genre_lightning.utils.errors import ConfigError, exit_on_user_error, find_user_error

log = logging.getLogger(__name__)

SETTINGS_FILE = "split_settings.json"
# The data settings a split (or a fold assignment) depends on (not batch size, workers or augmentation,
# nor data.fold and data.cv_val_fraction: a job derives its fold's splits from the shared assignment).
SPLIT_KEYS = (
    "classes",
    "root",
    "annotations",
    "fractions",
    "split_seed",
    "demo",
    "duplicates",
    "min_image_side",
    "folds",
    "cv_test_fraction",
    "shards",
    # Label fixes (data/label_fixes.py) change the rows of every split: runs with and without them are
    # different data (the fold assignment itself is that of the data as filed).
    "label_fixes",
    "label_fixes_scope",
)


def split_settings(data: DictConfig) -> dict[str, Any]:
    """The resolved settings that decide the split, comparable between the launcher and the jobs (a
    label-fixes file by its path and its content's SHA-256, so an edit between the two shows)."""
    settings = {key: OmegaConf.to_container(data, resolve=True).get(key) for key in SPLIT_KEYS}
    fixes = settings.get("label_fixes")
    if fixes and Path(fixes).is_file():
        settings["label_fixes"] = {"path": fixes, "sha256": hashlib.sha256(Path(fixes).read_bytes()).hexdigest()}
    return settings


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


class SharedSplit(Callback):
    """Prepare the sweep's split once, in the sweep folder, before the jobs start."""

    @exit_on_user_error
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        data = config.get("data")
        if not data or "_target_" not in data or data.get("split_file") or config.get("ckpt_path"):
            return  # nothing to share: an explicit split file, or a resumed checkpoint's own split
        HydraConfig.instance().set_config(config)  # the data config's paths use ${hydra:runtime.cwd}
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            # The fold assignment as filed: each job applies the label fixes to its own fold's splits.
            datamodule = instantiate(data, output_dir=str(sweep_dir), label_fixes=None)
            datamodule.prepare_data()
        except Exception as error:
            swept = swept_split_settings(config)
            if not swept or not isinstance(find_user_error(error), ConfigError):
                raise
            # The launcher's config lacks the swept values (a swept data.root is unset here): the
            # jobs make their own splits, and a real mistake still fails in its job.
            log.info("No shared split (sweep over %s: %s): each job makes its own", ", ".join(swept), error)
            return
        (sweep_dir / SETTINGS_FILE).write_text(json.dumps(split_settings(data), indent=2))
        log.info("Sweep split: %s (used by every job whose data settings match)", sweep_dir / ANNOTATIONS_FILE)


def swept_split_settings(config: DictConfig) -> list[str]:
    """The split settings (or the whole ``data`` group) that this multirun's command line sweeps."""
    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))

    def decides_the_split(key: str) -> bool:  # data, data.root, data.duplicates.policy, ...
        return key == "data" or any(key == f"data.{k}" or key.startswith(f"data.{k}.") for k in SPLIT_KEYS)

    return [o.key_or_group for o in parsed if o.is_sweep_override() and decides_the_split(o.key_or_group)]


def shared_split_file(cfg: DictConfig) -> str | None:
    """The sweep's ``annotations.csv`` for this multirun job, or None (not a multirun, other data settings)."""
    if not _multirun() or cfg.data.get("split_file"):
        return None
    sweep_dir = Path(HydraConfig.get().sweep.dir)
    shared, settings = sweep_dir / ANNOTATIONS_FILE, sweep_dir / SETTINGS_FILE
    if not shared.is_file() or not settings.is_file():
        return None
    if json.loads(settings.read_text()) != split_settings(cfg.data):
        log.warning("This job's data settings differ from the sweep's (%s): it makes its own split", settings)
        return None
    return str(shared)


@contextmanager
def local_ddp_job(cfg: DictConfig, output_dir: Path, world_size: int) -> Iterator[None]:
    """Run this multirun job's fit and test with local DDP processes that belong to this job.

    Lightning starts local ranks > 0 by re-running the command line with ``hydra.run.dir`` set to
    the parent's ``hydra.run.dir``. In a multirun that command line is the whole sweep
    (``-m a=1,2``), so each child would start a sweep of its own in a new folder. Here the command
    line becomes this job's overrides (and its split file), ``hydra.run.dir`` this job's folder.
    Afterwards the process group and the variables Lightning exported are removed, so the next
    job of the sweep, in this same process, starts its own processes again.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment  # here: every command imports this module

    spawns_ranks = world_size > 1 and _multirun() and not SLURMEnvironment.detect() and "LOCAL_RANK" not in os.environ
    if not spawns_ranks:
        yield
        return
    hydra_cfg = HydraConfig.get()
    overrides = [*hydra_cfg.overrides.task]
    if cfg.data.get("split_file"):
        overrides.append(f"data.split_file={cfg.data.split_file}")
    saved_argv, saved_run_dir, saved_environ = sys.argv, hydra_cfg.run.dir, dict(os.environ)
    sys.argv = [sys.argv[0], *overrides]
    with read_write(hydra_cfg.run):
        hydra_cfg.run.dir = str(output_dir)
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved_environ)
        sys.argv = saved_argv
        with read_write(hydra_cfg.run):
            hydra_cfg.run.dir = saved_run_dir
