"""A user's own config folder, added without editing the package: ``--config-dir`` and
``hydra.searchpath``, through the console script's function, from a folder outside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers.cli import run_entry_point
from tests.helpers.configs import FAST
from tests.helpers.paths import REPO

EXPERIMENT = """\
# @package _global_
defaults:
  - override /finetune: none   # packaged options, chosen by the user's experiment
task_name: mine
model:
  optimizer:
    lr: 0.0123
"""
MODEL_OPTION = """\
defaults:
  - tiny            # a packaged model option, extended
label_smoothing: 0.37
"""


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    (tmp_path / "myconf" / "experiment").mkdir(parents=True)
    (tmp_path / "myconf" / "model").mkdir()
    (tmp_path / "myconf" / "experiment" / "mine.yaml").write_text(EXPERIMENT)
    (tmp_path / "myconf" / "model" / "mymodel.yaml").write_text(MODEL_OPTION)
    return tmp_path


@pytest.mark.slow
def test_an_experiment_from_config_dir_trains_into_this_folders_outputs(user_folder: Path, poster_root: Path):
    done = run_entry_point(
        "genre-train",
        "--config-dir",
        "myconf",
        "experiment=mine",
        *FAST,
        f"data.root={poster_root}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "test=false",
        cwd=user_folder,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (user_folder / "outputs" / "mine" / "runs").iterdir()  # task_name from the user's experiment
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["optimizer"]["lr"] == 0.0123
    assert config["trainer"]["max_epochs"] == 1  # the command line still wins
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_a_group_option_from_hydra_searchpath_composes_with_the_packaged_ones(user_folder: Path):
    done = run_entry_point(
        "genre-train",
        f"hydra.searchpath=[file://{user_folder / 'myconf'}]",
        "model=mymodel",
        "--cfg",
        "job",
        cwd=user_folder,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config = yaml.safe_load(done.stdout)
    assert config["model"]["label_smoothing"] == 0.37
    assert (
        config["model"]["backbone"] == yaml.safe_load((REPO / "conf" / "model" / "tiny.yaml").read_text())["backbone"]
    )
    assert not (user_folder / "outputs").exists()  # --cfg job only prints
