"""The decoded-image cache: same pixels, less decoding, right invalidation."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from genre_lightning.data.datamodule import PosterDataModule
from genre_lightning.data.demo import GENRES
from genre_lightning.data.image_cache import DecodedImageCache
from tests.helpers.posters import copy_posters, edit_image

SHORT = ["trainer.limit_val_batches=1", "test=false", "logger=csv", "model/scheduler=constant", "data.augment=null"]


CONFIG_32 = {
    "input_size": (3, 32, 32),
    "interpolation": "bicubic",
    "mean": (0.5,) * 3,
    "std": (0.5,) * 3,
    "crop_pct": 1.0,
    "crop_mode": "squash",
}


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
