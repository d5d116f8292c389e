"""Training runs are repeatable with seed=, and resumable with ckpt_path=."""

from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from genre_lightning.cli.train import _resume_in_place, build, optimized_metric_value, train
from genre_lightning.utils.errors import ConfigError
from tests.helpers.configs import train_config

SHORT = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "test=false",
    "logger=csv",
    "finetune=none",
]


def last_weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_same_seed_same_weights_other_seed_other_weights(poster_root: Path, tmp_path: Path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        train(train_config(poster_root, tmp_path / name, *SHORT, f"seed={seed}"))
    a, b, c = (last_weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    # The split does not depend on the training seed: all three runs share one test set.
    splits = [(tmp_path / n / "annotations.csv").read_text() for n in "abc"]
    assert splits[0] == splits[1] == splits[2]


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint_on_the_same_split(poster_root: Path, tmp_path: Path):
    train(train_config(poster_root, tmp_path / "first", *SHORT))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 1
    # A new run folder, a different split seed: the resumed run still uses the first run's split.
    train(
        train_config(
            poster_root, tmp_path / "second", *SHORT, "trainer.max_epochs=3", "data.split_seed=5", f"ckpt_path={last}"
        )
    )
    resumed = torch.load(tmp_path / "second" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 2 and resumed["global_step"] == 3 * 3
    first_split = (tmp_path / "first" / "annotations.csv").read_text()
    assert (tmp_path / "second" / "annotations.csv").read_text() == first_split


@pytest.mark.slow
def test_rerun_in_the_same_run_folder_continues_from_its_last_checkpoint(poster_root: Path, tmp_path: Path):
    """What a requeued Slurm job does: the same run folder, no ckpt_path, training goes on."""
    train(train_config(poster_root, tmp_path, *SHORT))
    train(train_config(poster_root, tmp_path, *SHORT, "trainer.max_epochs=3"))
    # 2 epochs of 3 steps, then the third epoch only (not 3 more epochs from scratch).
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3 * 3
    # auto_resume=false starts again from scratch.
    train(train_config(poster_root, tmp_path, *SHORT, "trainer.max_epochs=1", "auto_resume=false"))
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_a_requeued_run_started_with_ckpt_path_resumes_from_its_own_last_checkpoint(tmp_path: Path):
    cfg = OmegaConf.create({"ckpt_path": str(tmp_path / "elsewhere" / "last.ckpt"), "auto_resume": True})
    trainer = pl.Trainer(default_root_dir=tmp_path, callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints")])
    assert _resume_in_place(cfg, trainer) == cfg.ckpt_path  # first start: nothing of its own yet
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")  # written before the Slurm signal
    assert _resume_in_place(cfg, trainer) == str(tmp_path / "checkpoints" / "last.ckpt")
    cfg.auto_resume = False
    assert _resume_in_place(cfg, trainer) == cfg.ckpt_path


@pytest.mark.slow
def test_last_ckpt_is_the_last_epoch_even_when_val_acc_did_not_improve(poster_root: Path, tmp_path: Path):
    # "Best" = lowest epoch: no epoch after the first improves on it.
    best_is_first = ["callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min"]
    train(train_config(poster_root, tmp_path, *SHORT, "trainer.max_epochs=3", *best_is_first))
    best = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name != "last.ckpt"]
    assert len(best) == 1 and best[0].startswith("epoch00")
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 3 * 3)


class StepLosses(Callback):
    def __init__(self) -> None:
        self.losses: list[tuple[float, int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append((float(outputs["loss"]), len(batch["target"])))


@pytest.mark.slow
def test_epoch_training_loss_is_the_mean_over_every_image_of_the_epoch(poster_root: Path, tmp_path: Path):
    # 84 training images in batches of 20: the last batch holds 4, so a plain mean of the step
    # losses would differ from the mean over images.
    options = ["trainer.max_epochs=1", "data.batch_size=20", "trainer.limit_val_batches=1"]
    cfg = train_config(poster_root, tmp_path, *options, "test=false", "logger=csv", "finetune=none",
                       "trainer.log_every_n_steps=1")  # fmt: skip
    seed_everything(cfg.seed, workers=True)
    steps = StepLosses()
    datamodule, model, trainer = build(cfg, extra_callbacks=[steps])
    trainer.fit(model, datamodule=datamodule)
    sizes = [n for _, n in steps.losses]
    assert sizes == [20, 20, 20, 20, 4]
    per_image = sum(loss * n for loss, n in steps.losses) / sum(sizes)
    assert float(trainer.logged_metrics["train/loss"]) == pytest.approx(per_image, rel=1e-5)
    # The per-step values are logged as they were, one row per step, under the same tag as before.
    logged = pd.read_csv(next(tmp_path.rglob("metrics.csv")))
    step_values = logged["train/loss_step"].dropna().tolist()
    assert step_values == pytest.approx([loss for loss, _ in steps.losses], rel=1e-5)
    assert logged["train/loss"].dropna().tolist() == pytest.approx([per_image], rel=1e-5)
    assert model.train_loss.update_count == 0  # reset for the next epoch


def test_the_optimized_metric_comes_from_the_best_checkpoint_then_the_last_validation_then_test():
    results = {
        "best_val": {"val/acc": 0.75},
        "final_val": {"val/acc": 0.5, "val/loss": 1.25, "val/f1_macro": 0.4},
        "test": {"test/acc": 0.625},
    }
    assert optimized_metric_value("val/acc", results) == 0.75  # the checkpoint that was tested
    assert optimized_metric_value("val/loss", results) == 1.25  # trainer.test cleared it from callback_metrics
    assert optimized_metric_value("test/acc", results) == 0.625
    assert optimized_metric_value(None, results) is None
    with pytest.raises(ConfigError, match=r"optimized_metric='val/acc_top2' is not valid: expected a metric this run"):
        optimized_metric_value("val/acc_top2", results)
