"""Freeze state before and after each unfreeze milestone, and after a resume past one."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from genre_lightning.cli.train import build
from genre_lightning.training.finetune import GradualUnfreeze, backbone_layer_groups
from genre_lightning.training.module import GenreClassifier
from tests.helpers.configs import train_config

SHORT = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "test=false", "logger=csv"]


def batchnorms(pl_module) -> list[torch.nn.BatchNorm2d]:
    return [m for m in pl_module.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]


class FreezeRecorder(Callback):
    """Records, after the first step of each epoch, what was trainable."""

    def __init__(self) -> None:
        self.epochs: dict[int, dict] = {}
        self.at_train_start: dict | None = None

    @staticmethod
    def snapshot(trainer, pl_module) -> dict:
        finetuner = next(c for c in trainer.callbacks if isinstance(c, GradualUnfreeze))
        optimizer = trainer.optimizers[0]
        return {
            "chunks_trainable": [all(p.requires_grad for p in chunk) for chunk in finetuner.chunks(pl_module)],
            "chunks_frozen": [not any(p.requires_grad for p in chunk) for chunk in finetuner.chunks(pl_module)],
            "head_trainable": all(p.requires_grad for p in pl_module.net.get_classifier().parameters()),
            "lrs": [group["lr"] for group in optimizer.param_groups],
            "optimized": {id(p) for group in optimizer.param_groups for p in group["params"]},
            "state_for": {id(p) for p in optimizer.state},
            "frozen_bn_in_eval": all(not m.training for m in batchnorms(pl_module) if not m.weight.requires_grad),
            # (trainable, in train mode) of each BatchNorm layer
            "bn_modes": [(m.weight.requires_grad, m.training) for m in batchnorms(pl_module)],
        }

    def on_train_start(self, trainer, pl_module):
        self.at_train_start = self.snapshot(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0:  # the state the first step of each epoch trained with
            self.epochs[trainer.current_epoch] = self.snapshot(trainer, pl_module)


def fit(cfg, recorder: FreezeRecorder):
    datamodule, model, trainer = build(cfg, extra_callbacks=[recorder])
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    return model, trainer


@pytest.mark.slow
def test_gradual_unfreezing_follows_the_milestones(poster_root: Path, tmp_path: Path):
    cfg = train_config(
        poster_root,
        tmp_path,
        "finetune=gradual",
        "finetune.milestones=[1,2]",
        "finetune.backbone_lr_scale=0.1",
        "finetune.lr_decay=0.5",
        "model/scheduler=constant",
        "model.optimizer.lr=0.01",
        "trainer.max_epochs=3",
        *SHORT,
    )
    recorder = FreezeRecorder()
    datamodule, model, trainer = build(cfg, extra_callbacks=[recorder])
    groups = backbone_layer_groups(model.net)
    assert len(groups) == 5  # resnet10t: stem + 4 stages
    frozen_before = {name: p.detach().clone() for name, p in model.net.named_parameters() if "fc" not in name}
    trainer.fit(model, datamodule=datamodule)

    epoch0, epoch1, epoch2 = (recorder.epochs[e] for e in range(3))
    assert epoch0["head_trainable"] and epoch0["chunks_frozen"] == [True, True]
    assert epoch0["lrs"] == [0.01] and epoch0["frozen_bn_in_eval"]
    assert epoch1["chunks_trainable"] == [True, False] and epoch1["chunks_frozen"] == [False, True]
    assert epoch1["lrs"] == pytest.approx([0.01, 0.001])
    assert epoch2["chunks_trainable"] == [True, True]
    assert epoch2["lrs"] == pytest.approx([0.01, 0.001, 0.0005])
    # BatchNorm layers update their running statistics from the epoch they train in, not before.
    for epoch in (epoch0, epoch1, epoch2):
        assert all(trainable == training for trainable, training in epoch["bn_modes"])
    assert [t for t, _ in epoch1["bn_modes"]].count(True) > 0 and all(t for t, _ in epoch2["bn_modes"])
    # Every parameter ends up in the optimizer exactly once (BatchNorm weights of a random
    # init are equal tensors, and must not be mistaken for each other).
    all_params = {id(p) for p in model.parameters()}
    assert epoch2["optimized"] == all_params
    assert sum(len(g["params"]) for g in trainer.optimizers[0].param_groups) == len(all_params)
    # The bottom chunk (stem, layer1) was frozen for epochs 0-1 and trained only in epoch 2:
    # it changed, and so did the top.
    after = dict(model.net.named_parameters())
    assert not torch.equal(after["conv1.0.weight"], frozen_before["conv1.0.weight"])
    assert not torch.equal(after["layer4.0.conv1.weight"], frozen_before["layer4.0.conv1.weight"])


@pytest.mark.slow
def test_frozen_backbone_does_not_change_while_the_head_trains(poster_root: Path, tmp_path: Path):
    cfg = train_config(poster_root, tmp_path, "finetune=linear_probe", "trainer.max_epochs=1", *SHORT)
    datamodule, model, trainer = build(cfg)
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    trainer.fit(model, datamodule=datamodule)
    after = model.net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # Only the classifier moved; BatchNorm running statistics of the frozen backbone did not.
    assert changed == {"fc.weight", "fc.bias"}


@pytest.mark.slow
def test_resume_past_a_milestone_keeps_unfrozen_groups_unfrozen(poster_root: Path, tmp_path: Path):
    common = [
        "finetune=head_then_all",
        "finetune.milestones=[1]",
        "model/scheduler=constant",
        "model.optimizer.lr=0.01",
        *SHORT,
    ]
    first = FreezeRecorder()
    fit(train_config(poster_root, tmp_path / "a", *common, "trainer.max_epochs=2"), first)
    assert first.epochs[1]["chunks_trainable"] == [True]
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert last.is_file()

    resumed = FreezeRecorder()
    cfg = train_config(poster_root, tmp_path / "a", *common, "trainer.max_epochs=3", f"ckpt_path={last}")
    model, trainer = fit(cfg, resumed)
    start = resumed.at_train_start
    # Before any epoch of the resumed run starts, the backbone is trainable again, in its own
    # param group with the smaller LR, and Adam's moments for it came back from the checkpoint.
    assert start["chunks_trainable"] == [True]
    assert start["lrs"] == pytest.approx([0.01, 0.001])
    finetuner = next(c for c in trainer.callbacks if isinstance(c, GradualUnfreeze))
    backbone_ids = {id(p) for chunk in finetuner.chunks(model) for p in chunk}
    assert backbone_ids <= start["state_for"]
    assert resumed.epochs[2]["lrs"] == pytest.approx([0.01, 0.001])  # no duplicate group was added
    assert trainer.current_epoch == 3
    # BatchNorm trains as it did before the interruption: every layer trainable and in train mode.
    assert first.epochs[1]["bn_modes"] == resumed.epochs[2]["bn_modes"] == [(True, True)] * len(batchnorms(model))


@pytest.mark.slow
def test_freeze_bn_stats_keeps_the_running_statistics_of_unfrozen_layers(poster_root: Path, tmp_path: Path):
    cfg = train_config(
        poster_root,
        tmp_path,
        "finetune=head_then_all",
        "finetune.milestones=[0]",
        "finetune.freeze_bn_stats=true",
        "trainer.max_epochs=1",
        *SHORT,
    )
    recorder = FreezeRecorder()
    datamodule, model, trainer = build(cfg, extra_callbacks=[recorder])
    before = {k: v.clone() for k, v in model.net.state_dict().items() if "running_" in k}
    trainer.fit(model, datamodule=datamodule)
    assert recorder.epochs[0]["bn_modes"] == [(True, False)] * len(batchnorms(model))  # weights train, statistics stay
    assert all(torch.equal(before[k], model.net.state_dict()[k]) for k in before)
    assert not torch.equal(model.net.state_dict()["bn1.weight"], torch.ones_like(model.net.bn1.weight))


def test_freeze_bn_stats_defaults_to_keeping_pretrained_statistics_only():
    model = GenreClassifier("resnet10t", ["a", "b", "c", "d"], pretrained=False)
    GradualUnfreeze(milestones=[1]).freeze_before_training(model)
    assert model.keep_batchnorm_statistics is False  # a random init's statistics mean nothing: update them
    model.hparams.weights = "/weights/resnet10t.safetensors"  # as if the backbone had loaded a file
    GradualUnfreeze(milestones=[1]).freeze_before_training(model)
    assert model.keep_batchnorm_statistics is True
    GradualUnfreeze(milestones=[1], freeze_bn_stats=False).freeze_before_training(model)
    assert model.keep_batchnorm_statistics is False
