"""The decoded-image cache and the frozen-feature cache: same results, less work, right invalidation."""

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from lightning.pytorch import Callback, seed_everything

from genre_lightning.data.cache import DecodedImageCache
from genre_lightning.data.datamodule import PosterDataModule
from genre_lightning.data.demo import GENRES, ensure_demo_posters
from genre_lightning.feature_cache import FeatureStore, FrozenFeatureCache
from genre_lightning.model import GenreClassifier
from genre_lightning.train import build
from tests.conftest import train_config

SHORT = ["trainer.limit_val_batches=1", "test=false", "logger=csv", "model/scheduler=constant", "data.augment=null"]
CONFIG_32 = {
    "input_size": (3, 32, 32),
    "interpolation": "bicubic",
    "mean": (0.5,) * 3,
    "std": (0.5,) * 3,
    "crop_pct": 1.0,
    "crop_mode": "squash",
}


@pytest.fixture(scope="module")
def big_posters(tmp_path_factory) -> Path:
    """Posters larger than the model input, so the cache really shrinks them."""
    return ensure_demo_posters(tmp_path_factory.mktemp("big") / "posters", per_class=6, size=(96, 144), seed=1)


def loader_images(datamodule: PosterDataModule) -> torch.Tensor:
    return torch.cat([batch["image"] for batch in datamodule.val_dataloader()])


def cached_datamodule(output_dir: Path, cache_dir: str | None, config=CONFIG_32, **source) -> PosterDataModule:
    dm = PosterDataModule(GENRES, output_dir=str(output_dir), batch_size=4, augment=None, cache_dir=cache_dir, **source)
    dm.set_data_config(config)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def files_under(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def copy_posters(source: Path, target: Path) -> list[Path]:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.json"))
    return sorted(target.rglob("*.jpg"))


def edit_image(path: Path, replacement: Path) -> None:
    """Overwrite ``path`` with another picture, as an editor would (new bytes, a later mtime)."""
    before = path.stat().st_mtime_ns
    path.write_bytes(replacement.read_bytes())
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_decoded_cache_is_written_once_and_read_back(big_posters: Path, tmp_path: Path):
    def datamodule(cache_dir):
        return cached_datamodule(tmp_path / "run", cache_dir, root=str(big_posters))

    plain = loader_images(datamodule(None))
    cached_dm = datamodule(str(tmp_path / "cache"))
    first = loader_images(cached_dm)
    entries = sorted((tmp_path / "cache" / "decoded" / "32px").glob("*.npy"))
    assert len(entries) == len(cached_dm.datasets["val"])
    assert {e.stem for e in entries} == set(cached_dm.datasets["val"].keys)
    mtimes = [e.stat().st_mtime_ns for e in entries]
    second = loader_images(cached_dm)
    assert [e.stat().st_mtime_ns for e in entries] == mtimes  # read, not rewritten
    assert torch.equal(first, second)
    # Decoding a 96x144 poster, shrinking it to 32 px wide, then squashing to 32x32 is within
    # a hair of squashing the original directly.
    assert (first - plain).abs().mean() < 0.03


@pytest.mark.parametrize("relative", [False, True])
def test_a_split_file_without_hashes_caches_inside_the_cache_folder_only(
    big_posters: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: bool
):
    """A split file with only file_path,label,split (no sha256): entries must still be digests
    inside the cache folder, never ``<image>.npy`` beside the user's image (absolute paths) or a
    failed write (relative paths)."""
    monkeypatch.chdir(tmp_path)
    posters = copy_posters(big_posters, tmp_path / "userdata")
    before = files_under(tmp_path / "userdata")
    frame = pd.DataFrame(
        {
            "file_path": [str(p.relative_to(tmp_path) if relative else p) for p in posters],
            "label": [p.parent.name for p in posters],
            "split": ["train"] * len(posters),
        }
    )
    frame.to_csv(tmp_path / "split.csv", index=False)
    dm = cached_datamodule(tmp_path / "run", str(tmp_path / "cache"), split_file=str(tmp_path / "split.csv"))
    dataset = dm.datasets["train"]
    # No content hash: the dataset keys by path (relative ones resolved against the CSV's folder).
    assert dataset.keys == [str(p) for p in posters]
    for i in range(len(dataset)):
        assert isinstance(dataset[i], dict)
    assert files_under(tmp_path / "userdata") == before
    entries = sorted((tmp_path / "cache" / "decoded" / "32px").iterdir())
    assert len(entries) == len(posters)
    assert all(len(e.stem) == 64 and set(e.stem) <= set("0123456789abcdef") and e.suffix == ".npy" for e in entries)


def test_decoded_cache_misses_when_an_image_without_hash_is_edited(big_posters: Path, tmp_path: Path):
    first, other = copy_posters(big_posters, tmp_path / "userdata")[:2]
    cache = DecodedImageCache(tmp_path / "cache", 64)
    original = np.asarray(cache.load(str(first), str(first)))
    assert np.array_equal(np.asarray(cache.load(str(first), str(first))), original)  # served from the cache
    edit_image(first, other)
    edited = np.asarray(cache.load(str(first), str(first)))
    assert np.array_equal(edited, np.asarray(DecodedImageCache(tmp_path / "fresh", 64).load(str(first), "x")))
    assert not np.array_equal(edited, original)
    assert len(list(cache.folder.glob("*.npy"))) == 2  # a new entry; the old one is never served again
    assert sorted(p.name for p in (tmp_path / "userdata").rglob("*") if p.is_file()) == sorted(
        p.name for p in big_posters.rglob("*.jpg")
    )


def test_decoded_cache_entry_changes_with_the_input_size_and_the_content_hash(big_posters: Path, tmp_path: Path):
    cache_dir = str(tmp_path / "cache")
    small = cached_datamodule(tmp_path / "run", cache_dir, root=str(big_posters))
    large = cached_datamodule(
        tmp_path / "run", cache_dir, config={**CONFIG_32, "input_size": (3, 48, 48)}, root=str(big_posters)
    )
    assert next(iter(small.val_dataloader()))["image"].shape[-2:] == (32, 32)
    assert next(iter(large.val_dataloader()))["image"].shape[-2:] == (48, 48)
    folders = sorted(p.name for p in (tmp_path / "cache" / "decoded").iterdir())
    assert folders == ["32px", "48px"]  # no 32 px entry was reused for 48 px input
    # Same file, another content hash (an edited image rescanned): another entry.
    path = small.datasets["val"].paths[0]
    cache = DecodedImageCache(cache_dir, 32)
    count = len(list(cache.folder.glob("*.npy")))
    cache.load(path, "0" * 64)
    assert len(list(cache.folder.glob("*.npy"))) == count + 1 and (cache.folder / f"{'0' * 64}.npy").is_file()


def test_feature_store_recomputes_an_edited_image_without_hash(big_posters: Path, tmp_path: Path):
    first, other = copy_posters(big_posters, tmp_path / "userdata")[:2]
    calls = []

    def compute(images: torch.Tensor) -> torch.Tensor:
        calls.append(len(images))
        return images.mean(dim=(2, 3))

    images = torch.rand(1, 3, 4, 4)
    store = FeatureStore("s", tmp_path / "features" / "s.pt")
    store.features([str(first)], images, compute)
    store.save()
    reloaded = FeatureStore("s", tmp_path / "features" / "s.pt")
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


class StoreSpy(Callback):
    def __init__(self):
        self.per_epoch = []

    def on_train_epoch_end(self, trainer, pl_module):
        caches = [c for c in trainer.callbacks if isinstance(c, FrozenFeatureCache)]
        stores = list(caches[0]._stores.values()) if caches else []
        self.per_epoch.append([(s.hits, s.misses, len(s.table)) for s in stores])


def fit(poster_root, out, *overrides):
    spy = StoreSpy()
    cfg = train_config(poster_root, out, *SHORT, *overrides)
    seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg, extra_callbacks=[spy])
    trainer.fit(model, datamodule=datamodule)
    return model, spy


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


def test_stochastic_depth_keeps_training_off_the_cache_and_the_head_unchanged(
    poster_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """With drop_path_rate > 0 a frozen backbone still drops residual branches at random in training;
    stored (eval-mode) features would train another head, so training must not use them."""
    common = ["finetune=linear_probe", "trainer.max_epochs=2", "model.drop_path_rate=0.2"]
    with caplog.at_level("INFO", logger="genre_lightning.feature_cache"):
        cached, spy = fit(poster_root, tmp_path / "a", *common)
    plain, _ = fit(poster_root, tmp_path / "b", *common, "~callbacks.feature_cache")
    for key in ("net.fc.weight", "net.fc.bias"):
        assert torch.allclose(cached.state_dict()[key], plain.state_dict()[key], atol=1e-5)
    val_size = (pd.read_csv(tmp_path / "a" / "annotations.csv")["split"] == "val").sum()
    lookups = [sum(h + m for h, m, _ in epoch) for epoch in spy.per_epoch]
    assert lookups == [2 * val_size, 3 * val_size]  # validation only: sanity check, then once per epoch
    assert sum("stochastic depth" in r.getMessage() for r in caplog.records) == 1  # said once, not per epoch


def test_cache_is_not_used_once_the_backbone_trains(poster_root: Path, tmp_path: Path):
    # Unfrozen at epoch 1: epoch 1 must run the real backbone (no store lookups for training).
    _, spy = fit(
        poster_root, tmp_path / "a", "finetune=head_then_all", "finetune.milestones=[1]", "trainer.max_epochs=2"
    )
    train_store_hits = [sum(h for h, _, _ in epoch) for epoch in spy.per_epoch]
    # Epoch 1 adds only validation lookups (val runs on the now-changing backbone: new store).
    assert train_store_hits[1] - train_store_hits[0] < 84


def test_augmented_training_does_not_use_cached_features(poster_root: Path, tmp_path: Path):
    _, spy = fit(
        poster_root, tmp_path / "a", "finetune=linear_probe", "trainer.max_epochs=2", "data.augment={hflip: 0.5}"
    )
    total_lookups = sum(h + m for h, m, _ in spy.per_epoch[-1])
    val_lookups = 2 * 18 + 18  # sanity check + two validation epochs, at most
    assert total_lookups <= val_lookups + 18


def test_feature_store_on_disk_serves_a_later_run(poster_root: Path, tmp_path: Path):
    common = ["finetune=linear_probe", "trainer.max_epochs=1", f"data.cache_dir={tmp_path / 'cache'}"]
    fit(poster_root, tmp_path / "a", *common)
    stores = list((tmp_path / "cache" / "features").glob("*.pt"))
    assert stores
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
