"""Multiruns as a user starts them (`genre-train -m ...`): one shared split (the search: test_search.py).

DDP jobs in a local multirun: tests/test_ddp_matrix.py."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from genre_lightning.inference.predictor import Predictor
from genre_lightning.launch.sweep import split_settings
from genre_lightning.utils.csvio import read_csv
from tests.helpers.cli import run_cli, run_entry_point
from tests.helpers.configs import FAST, compose_config

TINY_JOB = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "data.batch_size=8",
    "logger=csv",
    "finetune=none",
    "test=false",
]


def multirun(
    poster_root: Path | str, tmp_path: Path, *overrides: str, console: bool = False
) -> tuple[Path, list[Path], str]:
    """Run ``genre-train -m`` with outputs under ``tmp_path/outputs``, through the console script
    (``console``) or its function in this process; the sweep folder and its job folders."""
    args = (
        "genre-train",
        "-m",
        *FAST,
        *TINY_JOB,
        f"data.root={poster_root}",
        f"paths.output_root={tmp_path / 'outputs'}",
    )
    done = (run_cli if console else run_entry_point)(*args, *overrides, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    # One multirun folder under outputs/<task>/multiruns/.
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    return sweep, jobs, done.stdout + done.stderr


@pytest.mark.parametrize("override", ["data.duplicates.policy=drop", "data.min_image_side=64", "data.split_seed=3"])
def test_split_settings_include_what_changes_annotations(tmp_path: Path, override: str):
    """A job whose duplicate policy or size filter differs from the sweep's must not reuse its split."""
    base = compose_config("train", ["data.root=/posters"], tmp_path)
    changed = compose_config("train", ["data.root=/posters", override], tmp_path)
    assert split_settings(base.data) != split_settings(changed.data)
    assert split_settings(base.data) == split_settings(compose_config("train", ["data.root=/posters"], tmp_path).data)


def val_accuracy(job: Path) -> float:
    """The job's best checkpoint's top-1 accuracy over its validation split, predicted again from
    the image files (the run validated all of them: one batch of up to data.eval_batch_size)."""
    split = read_csv(job / "annotations.csv")
    val = split[split["split"] == "val"]
    assert 0 < len(val) <= OmegaConf.load(job / "config.yaml").data.eval_batch_size
    predictor = Predictor.from_checkpoint(json.loads((job / "metrics.json").read_text())["best_ckpt_path"])
    results = predictor.predict(list(val["file_path"]))
    return sum(r.genre == label for r, label in zip(results, val["label"], strict=True)) / len(val)


@pytest.mark.slow
def test_multirun_jobs_share_one_split_made_once(poster_root: Path, tmp_path: Path):
    sweep, jobs, _ = multirun(poster_root, tmp_path, "seed=1,2", "data.split_seed=0,5", console=True)
    assert len(jobs) == 4
    shared = (sweep / "annotations.csv").read_text()
    own_splits = []
    settings = set()
    for job in jobs:
        cfg = OmegaConf.load(job / "config.yaml")
        settings.add((cfg.seed, cfg.data.split_seed))
        best_val = json.loads((job / "metrics.json").read_text())["best_val"]["val/acc"]
        assert best_val == pytest.approx(val_accuracy(job), abs=1e-6)
        split = (job / "annotations.csv").read_text()
        report = json.loads((job / "data_report.json").read_text())
        if cfg.data.split_seed == 0:  # the sweep's data settings: the sweep's split, copied, not made again
            assert cfg.data.split_file == str(sweep / "annotations.csv")
            assert report["split_file"] == str(sweep / "annotations.csv")
            assert split == shared
        else:  # a swept split seed: the job makes its own split
            assert cfg.data.split_file is None and "split_file" not in report
            own_splits.append(split)
    assert settings == {(1, 0), (2, 0), (1, 5), (2, 5)}
    assert own_splits[0] == own_splits[1] != shared


@pytest.mark.slow
def test_a_sweep_over_data_roots_gives_each_job_its_own_split(poster_root: Path, tmp_path: Path):
    other_root = shutil.copytree(poster_root, tmp_path / "other_posters")
    sweep, jobs, output = multirun(f"{poster_root},{other_root}", tmp_path)
    assert "each job makes its own" in output
    assert not (sweep / "annotations.csv").exists()
    for job, root in zip(jobs, (poster_root, other_root), strict=True):
        assert OmegaConf.load(job / "config.yaml").data.root == str(root)
        files = pd.read_csv(job / "annotations.csv")["file_path"]
        assert len(files) == 120 and all(Path(f).is_relative_to(root) for f in files)


@pytest.mark.slow
def test_the_folds_of_a_cross_validation_share_the_frozen_features(poster_root: Path, tmp_path: Path):
    """A probe's folds in one multirun: fold 0 computes every poster's features, the later folds none
    (without data.cache_dir the store stays in memory, for this multirun's jobs only)."""
    overrides = ["finetune=linear_probe", "test=true", "data.folds=3", "data.fold=0,1,2", "data.augment=null"]
    overrides += ["trainer.limit_train_batches=1.0", "trainer.limit_val_batches=1.0"]  # every poster, every fold
    _, jobs, _ = multirun(poster_root, tmp_path, *overrides, console=True)
    computed = []
    for job in jobs:
        lines = [line for line in (job / "train.log").read_text().splitlines() if "Frozen-feature cache (fit)" in line]
        computed.append(int(lines[-1].rsplit(", ", 1)[1].split()[0]))
    assert computed[0] > 0 and computed[1:] == [0, 0], computed
