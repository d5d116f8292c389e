"""The frozen-feature cache: same results, less work, right invalidation."""

from pathlib import Path

import pandas as pd
import pytest
import timm
import torch
from lightning.pytorch import Callback, seed_everything

from genre_lightning.cli.train import build
from genre_lightning.data.demo import GENRES
from genre_lightning.training.feature_cache import FrozenFeatureCache
from genre_lightning.training.feature_store import FeatureStore
from genre_lightning.training.module import GenreClassifier
from tests.helpers.configs import train_config
from tests.helpers.posters import copy_posters, edit_image

SHORT = ["trainer.limit_val_batches=1", "test=false", "logger=csv", "model/scheduler=constant", "data.augment=null"]


class StoreSpy(Callback):
    def __init__(self):
        self.per_epoch = []

    def on_train_epoch_end(self, trainer, pl_module):
        caches = [c for c in trainer.callbacks if isinstance(c, FrozenFeatureCache)]
        stores = list(caches[0]._stores.values()) if caches else []
        self.per_epoch.append([(s.hits, s.misses, len(s)) for s in stores])


def fit(poster_root, out, *overrides):
    spy = StoreSpy()
    cfg = train_config(poster_root, out, *SHORT, *overrides)
    seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg, extra_callbacks=[spy])
    trainer.fit(model, datamodule=datamodule)
    return model, spy


def test_feature_store_recomputes_an_edited_image_without_hash(big_posters: Path, tmp_path: Path):
    first, other = copy_posters(big_posters, tmp_path / "userdata")[:2]
    calls = []

    def compute(images: torch.Tensor) -> torch.Tensor:
        calls.append(len(images))
        return images.mean(dim=(2, 3))

    images = torch.rand(1, 3, 4, 4)
    store = FeatureStore("s", tmp_path / "features" / "s")
    store.features([str(first)], images, compute)
    store.save()
    reloaded = FeatureStore("s", tmp_path / "features" / "s")
    reloaded.features([str(first)], images, compute)
    assert calls == [1] and reloaded.hits == 1  # unchanged file: served from disk
    edit_image(first, other)
    reloaded.features([str(first)], images, compute)
    assert calls == [1, 1] and reloaded.misses == 1  # edited file: computed again, not stale features


@pytest.mark.parametrize("backbone", ["resnet10t", "test_efficientnet", "mobilenetv3_small_050"])
def test_cached_features_then_classifier_equal_the_full_network(backbone):
    model = GenreClassifier(backbone, GENRES, drop_rate=0.3).eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.classify_features(model.backbone_features(images)), model(images), atol=1e-5)


@pytest.mark.slow
def test_linear_probe_with_the_cache_learns_the_same_head(poster_root: Path, tmp_path: Path):
    common = ["finetune=linear_probe", "trainer.max_epochs=3"]
    cached, spy = fit(poster_root, tmp_path / "a", *common)
    plain, no_spy = fit(poster_root, tmp_path / "b", *common, "~callbacks.feature_cache")
    assert len(no_spy.per_epoch) == 3
    head = ("net.fc.weight", "net.fc.bias")
    for key in head:
        assert torch.allclose(cached.state_dict()[key], plain.state_dict()[key], atol=1e-5)
    # Each training image went through the backbone once (epoch 0); epochs 1-2 only looked up.
    train_size = 84
    ((hits0, misses0, _),) = [s for s in spy.per_epoch[0] if s[2] >= train_size]
    ((hits2, misses2, _),) = [s for s in spy.per_epoch[2] if s[2] >= train_size]
    assert misses2 == misses0 and hits2 - hits0 >= 2 * train_size


@pytest.mark.slow
def test_stochastic_depth_keeps_training_off_the_cache_and_the_head_unchanged(
    poster_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """With drop_path_rate > 0 a frozen backbone still drops residual branches at random in training;
    stored (eval-mode) features would train another head, so training must not use them."""
    common = ["finetune=linear_probe", "trainer.max_epochs=2", "model.drop_path_rate=0.2"]
    with caplog.at_level("INFO", logger="genre_lightning.training.feature_cache"):
        cached, spy = fit(poster_root, tmp_path / "a", *common)
    plain, _ = fit(poster_root, tmp_path / "b", *common, "~callbacks.feature_cache")
    for key in ("net.fc.weight", "net.fc.bias"):
        assert torch.allclose(cached.state_dict()[key], plain.state_dict()[key], atol=1e-5)
    val_size = (pd.read_csv(tmp_path / "a" / "annotations.csv")["split"] == "val").sum()
    lookups = [sum(h + m for h, m, _ in epoch) for epoch in spy.per_epoch]
    assert lookups == [2 * val_size, 3 * val_size]  # validation only: sanity check, then once per epoch
    assert sum("stochastic depth" in r.getMessage() for r in caplog.records) == 1  # said once, not per epoch


@pytest.mark.slow
def test_cache_is_not_used_once_the_backbone_trains(poster_root: Path, tmp_path: Path):
    # Unfrozen at epoch 1: epoch 1 must run the real backbone (no store lookups for training).
    _, spy = fit(
        poster_root, tmp_path / "a", "finetune=head_then_all", "finetune.milestones=[1]", "trainer.max_epochs=2"
    )
    train_store_hits = [sum(h for h, _, _ in epoch) for epoch in spy.per_epoch]
    # Epoch 1 adds only validation lookups (val runs on the now-changing backbone: new store).
    assert train_store_hits[1] - train_store_hits[0] < 84


@pytest.mark.slow
def test_augmented_training_does_not_use_cached_features(poster_root: Path, tmp_path: Path):
    _, spy = fit(
        poster_root, tmp_path / "a", "finetune=linear_probe", "trainer.max_epochs=2", "data.augment={hflip: 0.5}"
    )
    total_lookups = sum(h + m for h, m, _ in spy.per_epoch[-1])
    val_lookups = 2 * 18 + 18  # sanity check + two validation epochs, at most
    assert total_lookups <= val_lookups + 18


@pytest.mark.slow
def test_feature_store_on_disk_serves_a_later_run(poster_root: Path, tmp_path: Path):
    common = ["finetune=linear_probe", "trainer.max_epochs=1", f"data.cache_dir={tmp_path / 'cache'}"]
    fit(poster_root, tmp_path / "a", *common)
    parts = list((tmp_path / "cache" / "features").glob("*/part-0-*.npy"))
    assert parts and all(p.with_suffix(".keys").is_file() for p in parts)
    _, spy = fit(poster_root, tmp_path / "b", *common)
    assert all(misses == 0 for _, misses, _ in spy.per_epoch[0])
    # A different backbone init (another seed, random weights) must not reuse those features.
    _, other = fit(poster_root, tmp_path / "c", *common, "seed=99")
    assert any(misses > 0 for _, misses, _ in other.per_epoch[0])


def test_timm_classifier_follows_pre_logits_for_a_conv_head_model():
    net = timm.create_model("mobilenetv3_small_050", num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = net.forward_head(net.forward_features(x), pre_logits=True)
        assert torch.allclose(net.get_classifier()(pooled), net(x), atol=1e-5)


def test_a_feature_store_serves_the_frozen_backbone_and_gives_the_same_logits():
    torch.manual_seed(0)
    model = GenreClassifier("resnet10t", GENRES, data_config={"input_size": (3, 32, 32)}).eval()
    classifier = {id(p) for p in model.net.get_classifier().parameters()}
    for p in model.net.parameters():
        p.requires_grad = id(p) in classifier
    images = torch.randn(3, 3, 32, 32)
    batch = {"key": ["a", "b", "c"], "image": images}
    store = FeatureStore("test")
    store.stages = {"val"}
    model.use_feature_store(store)
    with torch.no_grad():
        first, second = model._logits(batch, "val"), model._logits(batch, "val")
        direct = model(images)
    assert (store.misses, store.hits) == (3, 3)  # computed once, then served
    torch.testing.assert_close(first, direct, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(second, first)
    model.use_feature_store(None)
    with torch.no_grad():
        model._logits(batch, "val")
    assert (store.misses, store.hits) == (3, 3)  # no store: computed, not looked up


def test_a_store_on_disk_is_written_in_chunks_shared_by_ranks_and_read_memory_mapped(tmp_path: Path):
    """Two ranks write into one folder; each reads the other's rows after a refresh, as float16 if asked."""
    folder = tmp_path / "store"
    rank0 = FeatureStore("s", folder, dtype="float16", rank=0, chunk_rows=4)
    rank1 = FeatureStore("s", folder, dtype="float16", rank=1, chunk_rows=4)
    features = torch.randn(10, 6)
    keys = [f"{i:064x}" for i in range(10)]  # content hashes, as the split file has them

    def rows(indices):
        return lambda images: features[indices][: len(images)]

    rank0.features(keys[:5], torch.zeros(5, 1), rows(list(range(5))))  # 5 >= 4 rows: written at once
    rank1.features(keys[5:], torch.zeros(5, 1), rows(list(range(5, 10))))
    assert len(list(folder.glob("part-*.npy"))) == 2 and "0" * 64 not in rank1
    rank1.refresh()
    served = rank1.features(keys, torch.zeros(10, 1), rows([]))
    assert rank1.misses == 5 and rank1.hits == 10  # the second call computed nothing
    torch.testing.assert_close(served, features.half().float())
    part = next(folder.glob("part-0-*.npy"))
    assert (
        isinstance(rank1._parts[0], __import__("numpy").memmap)
        and part.with_suffix(".keys").read_text().split() == keys[:5]
    )
