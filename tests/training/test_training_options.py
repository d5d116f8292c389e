"""Recipe options: warm-up + cosine with late param groups, flip test-time augmentation, balanced sampling."""

from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch import seed_everything
from torch.utils.data import DataLoader

from genre_lightning.cli.train import build
from genre_lightning.data.datamodule import PosterDataModule
from genre_lightning.data.dataset import PosterDataset, build_transforms, collate_posters
from genre_lightning.data.demo import GENRES
from genre_lightning.inference.backends import TorchBackend, frozen_logits
from genre_lightning.inference.predictor import Predictor
from genre_lightning.training.module import GenreClassifier
from genre_lightning.training.schedulers import WarmupCosineLR
from genre_lightning.utils.errors import ConfigError
from tests.helpers.configs import train_config


def test_warmup_cosine_shape():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = WarmupCosineLR(optimizer, max_epochs=11, warmup_epochs=1, warmup_start=0.1, min_ratio=0.01)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[1] == pytest.approx(1.0)
    assert lrs[6] == pytest.approx(0.01 + 0.99 * 0.5)  # half-way through the cosine
    assert lrs[11] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))


@pytest.mark.slow
def test_groups_unfrozen_later_follow_the_schedule_at_their_scale(poster_root: Path, tmp_path: Path):
    cfg = train_config(
        poster_root,
        tmp_path,
        "model/scheduler=warmup_cosine",
        "model.optimizer.lr=0.01",
        "finetune=head_then_all",
        "finetune.milestones=[2]",
        "finetune.backbone_lr_scale=0.1",
        "trainer.max_epochs=5",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "test=false",
        "logger=csv",
    )
    seed_everything(0)
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule)
    head, backbone = trainer.optimizers[0].param_groups
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    factor = scheduler.factor(scheduler.last_epoch)
    assert head["lr"] == pytest.approx(0.01 * factor)
    assert backbone["lr"] == pytest.approx(0.001 * factor)  # not double-decayed


def test_flip_tta_averages_an_image_and_its_mirror():
    model = GenreClassifier("resnet10t", GENRES, tta_hflip=True).eval()
    images = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        expected = (model.net(images) + model.net(images.flip(-1))) / 2
        assert torch.allclose(model(images), expected, atol=1e-6)
        # The frozen-feature path gives the same logits (the classifier is linear).
        cached = model.classify_features(model.backbone_features(images, flip_average=True))
        assert torch.allclose(cached, expected, atol=1e-5)
    assert model.flip_averaged("test") and not model.flip_averaged("train")


def test_balanced_sampling_draws_genres_equally(poster_root: Path, tmp_path: Path):
    root = tmp_path / "skewed"
    for genre in GENRES:  # Horror 30 images, the others 6
        (root / genre).mkdir(parents=True)
        for path in sorted((poster_root / genre).glob("*.jpg"))[: 30 if genre == "Horror" else 6]:
            (root / genre / path.name).write_bytes(path.read_bytes())
    seed_everything(0)
    dm = PosterDataModule(
        GENRES, output_dir=str(tmp_path / "run"), root=str(root), batch_size=500, balanced_sampling=True
    )
    dm.set_data_config({"input_size": (3, 8, 8)})
    dm.prepare_data()
    dm.setup("fit")
    drawn = Counter()
    loader = dm.train_dataloader()  # one loader, 20 epochs (its sampler's generator advances)
    for _ in range(20):
        drawn.update(next(iter(loader))["target"].tolist())
    shares = [drawn[i] / sum(drawn.values()) for i in range(4)]
    assert all(abs(share - 0.25) < 0.05 for share in shares), shares


@pytest.mark.parametrize("tta", [False, True])
def test_frozen_inference_trace_is_used_and_matches_the_model(tta: bool):
    model = GenreClassifier("resnet10t", GENRES, tta_hflip=tta).eval()
    images = torch.randn(3, 3, 48, 32)
    with torch.inference_mode():
        predictor = Predictor.from_module(model)
        network = TorchBackend(predictor.network, predictor.channels_last)
        forward = frozen_logits(network, images)
        assert forward != network.eager  # the trace was built, not the fallback
        assert torch.allclose(forward(images), model(images), atol=1e-4)
        assert torch.allclose(forward(images[:1]), model(images[:1]), atol=1e-4)  # any batch size


@pytest.mark.slow
def test_mixup_trains_on_soft_targets_and_skips_train_accuracy(poster_root: Path, tmp_path: Path):
    cfg = train_config(
        poster_root,
        tmp_path,
        "model.mixup={mixup_alpha: 0.4, cutmix_alpha: 1.0, prob: 1.0}",
        "model.label_smoothing=0.1",
        "model.drop_path_rate=0.1",
        "data.batch_size=8",
        "finetune=none",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "test=false",
        "logger=csv",
    )
    seed_everything(0)
    datamodule, model, trainer = build(cfg)
    before = model.net.fc.weight.detach().clone()
    trainer.fit(model, datamodule=datamodule)
    assert model.mixup is not None and model.mixup.label_smoothing == 0.1
    assert not torch.equal(before, model.net.fc.weight)  # it trained
    logged = trainer.logged_metrics
    assert "train/loss" in logged and "val/acc" in logged and "train/acc" not in logged


def test_test_ece_scores_softmax_probabilities_even_when_logits_lie_in_0_1(poster_root: Path):
    """torchmetrics takes a batch whose values all lie in [0, 1] as probabilities; logits that do
    must still be turned into probabilities first."""
    model = GenreClassifier("resnet10t", GENRES).eval()
    head = model.net.get_classifier()
    with torch.no_grad():  # every image gets the same logits, all inside [0, 1]
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.9, 0.2, 0.1, 0.05]))
    paths = sorted(str(p) for p in poster_root.rglob("*.jpg"))[::10]
    targets = [GENRES.index(Path(p).parent.name) for p in paths]
    _, eval_tf = build_transforms({"input_size": (3, 32, 32), "crop_pct": 1.0, "crop_mode": "squash"}, None)
    loader = DataLoader(PosterDataset(paths, targets, eval_tf), batch_size=4, collate_fn=collate_posters)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = trainer.test(model, dataloaders=loader, verbose=False)
    confidence = torch.tensor([0.9, 0.2, 0.1, 0.05]).softmax(dim=0).max().item()  # 0.42, not 0.9
    accuracy = sum(t == 0 for t in targets) / len(targets)
    assert metrics["test/ece"] == pytest.approx(abs(confidence - accuracy), abs=1e-5)


def test_an_unknown_scheduler_interval_is_one_line():
    with pytest.raises(ConfigError, match=r"^model\.scheduler_interval='epochs' is not valid: expected epoch or step$"):
        GenreClassifier("resnet10t", GENRES, scheduler_interval="epochs")


def _weights_after_an_epoch(poster_root: Path, out: Path, *overrides: str) -> tuple[dict, int]:
    cfg = train_config(
        poster_root,
        out,
        "data.batch_size=12",  # 84 training images: 7 whole steps, no partial one
        "data.augment=null",
        "model.drop_rate=0",
        "finetune=head_then_all",
        "finetune.milestones=[0]",  # every layer trains from the start ...
        "finetune.freeze_bn_stats=true",  # ... with BatchNorm statistics kept (eval-mode BatchNorm)
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=0",
        "test=false",
        "logger=csv",
        *overrides,
    )
    pl.seed_everything(cfg.seed)
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, trainer.global_step


@pytest.mark.slow
def test_micro_batches_make_the_same_steps_as_whole_batches(poster_root: Path, tmp_path: Path):
    whole, whole_steps = _weights_after_an_epoch(poster_root, tmp_path / "whole")
    micro, micro_steps = _weights_after_an_epoch(poster_root, tmp_path / "micro", "data.micro_batch_size=4")
    assert whole_steps == micro_steps == 7  # optimizer steps of 12 images either way
    changed = [
        k for k in whole if k.endswith("weight") and not torch.equal(whole[k], _initial(poster_root, tmp_path)[k])
    ]
    assert changed, "the weights did not train"
    for name in whole:
        torch.testing.assert_close(micro[name], whole[name], rtol=1e-4, atol=1e-5, msg=name)


def _initial(poster_root: Path, tmp_path: Path) -> dict:
    cfg = train_config(poster_root, tmp_path / "init")
    pl.seed_everything(cfg.seed)
    _, model, _ = build(cfg)
    return model.state_dict()


@pytest.mark.parametrize("micro", [5, 0, 24])
def test_a_micro_batch_that_does_not_divide_the_batch_is_one_line(micro: int, tmp_path: Path):
    with pytest.raises(ConfigError, match=r"data.micro_batch_size=.* expected null or a divisor of data.batch_size=12"):
        PosterDataModule(GENRES, output_dir=str(tmp_path), root=str(tmp_path), batch_size=12, micro_batch_size=micro)
