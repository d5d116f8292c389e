"""0.2's import paths keep working for one release: an old run's config.yaml still builds and trains,
old module paths say where the code moved, and an old checkpoint's state loads under today's names."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from genre_lightning._compat import MOVED
from genre_lightning.cli.train import build
from genre_lightning.inference.predictor import Predictor
from genre_lightning.training.finetune import GradualUnfreeze
from genre_lightning.training.module import GenreClassifier
from genre_lightning.training.schedulers import WarmupCosineLR
from tests.helpers.cli import run_cli, run_entry_point

OLD_CONFIG = Path(__file__).parent / "fixtures" / "run_config_0.2.yaml"
OLD_TARGETS = [
    "genre_lightning.model.GenreClassifier",
    "genre_lightning.schedulers.WarmupCosineLR",
    "genre_lightning.finetune.GradualUnfreeze",
    "genre_lightning.epoch_lines.progress_bar",
    "genre_lightning.feature_cache.FrozenFeatureCache",
    "genre_lightning.memory.ReleaseFreedMemory",
    "genre_lightning.results.callback.TestArtifacts",
]


@pytest.mark.slow
def test_an_old_runs_config_builds_the_new_classes_and_trains(tmp_path: Path):
    text = OLD_CONFIG.read_text()
    assert all(target in text for target in OLD_TARGETS)  # the fixture is what 0.2 wrote
    # The old run is a demo: it draws its own posters (80 per genre) into a folder of this test's,
    # not into the shared poster_root (it would replace those with its own).
    posters = tmp_path / "demo_posters"
    cfg = OmegaConf.create(text.replace("@RUN@", str(tmp_path / "run")).replace("@POSTERS@", str(posters)))
    for old in MOVED:  # imported by an earlier test in this worker: the finder (and its warning) runs once
        sys.modules.pop(old, None)
        parent, _, name = old.rpartition(".")
        if parent in sys.modules and hasattr(sys.modules[parent], name):
            delattr(sys.modules[parent], name)  # hydra's _locate reads the package attribute first
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        datamodule, model, trainer = build(cfg)
        trainer.fit(model, datamodule=datamodule)  # imports the scheduler's old path
    moved = " ".join(str(w.message) for w in caught if issubclass(w.category, FutureWarning))
    for old in ("model", "finetune", "results.callback", "schedulers"):
        assert f"genre_lightning.{old} moved to" in moved
    assert isinstance(model, GenreClassifier)
    assert any(isinstance(c, GradualUnfreeze) for c in trainer.callbacks)
    assert isinstance(trainer.lr_scheduler_configs[0].scheduler, WarmupCosineLR)
    assert trainer.global_step == cfg.trainer.max_epochs * cfg.trainer.limit_train_batches
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((posters / "demo_manifest.json").read_text())["per_class"] == 80


def test_old_module_paths_are_the_new_modules():
    with pytest.warns(FutureWarning, match="genre_lightning.errors moved to genre_lightning.utils.errors"):
        from genre_lightning.errors import ConfigError as old  # noqa: PLC0415
    from genre_lightning.utils.errors import ConfigError

    assert old is ConfigError


def test_a_checkpoint_with_the_old_threshold_names_loads_with_its_thresholds(tmp_path: Path):
    model = GenreClassifier("resnet10t", ["Action", "Comedy", "Horror"], task="multilabel")
    model.task.tuned_thresholds.copy_(torch.tensor([0.2, 0.4, 0.7]))
    state = {("thresholds" if k == "task.tuned_thresholds" else k): v for k, v in model.state_dict().items()}
    state["positive_weights"] = state.pop("task.positive_weights")
    torch.save({"state_dict": state, "hyper_parameters": dict(model.hparams)}, tmp_path / "old.ckpt")
    for loaded in (
        GenreClassifier.from_checkpoint(tmp_path / "old.ckpt"),
        Predictor.from_checkpoint(tmp_path / "old.ckpt"),
    ):
        assert loaded.task.thresholds().tolist() == pytest.approx([0.2, 0.4, 0.7])


@pytest.mark.slow
@pytest.mark.parametrize("command", ["genre-predict", "genre-eval", "genre-export"])
def test_a_file_that_is_not_a_checkpoint_is_one_line_everywhere(command: str, tmp_path: Path, poster_root: Path):
    not_a_checkpoint = tmp_path / "passwd"
    not_a_checkpoint.write_text("root:x:0:0:root:/root:/bin/bash\n")
    image = next(poster_root.rglob("*.jpg"))
    extra = {"genre-predict": [f"input={image}"], "genre-eval": [], "genre-export": ["format=onnx"]}[command]
    # genre-export's console script here (the only test that starts it); the others' in this process
    # (tests/cli/test_end_to_end.py starts theirs). A traceback would be an exception in this process.
    run = run_cli if command == "genre-export" else run_entry_point
    done = run(command, f"ckpt_path={not_a_checkpoint}", *extra, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-1500:]
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == (
        f"error: ckpt_path='{not_a_checkpoint}' is not valid: expected a .ckpt file written by genre-train "
        "or genre-ensemble (this file is not a torch checkpoint archive)"
    )
    assert "Traceback" not in done.stderr
