"""Shared fixtures: generated posters (real JPEGs) and one short real run; helpers are in tests/helpers/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from genre_lightning.data.demo import ensure_demo_posters
from tests.helpers.configs import train_config


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONNX exports made on first use (backend=auto) go to a folder of this session, not to ~/.cache;
    the commands the tests start inherit it."""
    folder = tmp_path_factory.mktemp("genre-lightning-cache")
    os.environ["GENRE_LIGHTNING_CACHE"] = str(folder)
    return folder / "onnx"


@pytest.fixture(scope="session")
def poster_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic posters, 30 per genre, 48x72 JPEGs in genre folders."""
    return ensure_demo_posters(tmp_path_factory.mktemp("data") / "posters", per_class=30, size=(48, 72), seed=0)


@pytest.fixture(scope="session")
def tiny_run(poster_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short real run, shared by the results and export tests: 2 epochs of 3 batches, the backbone
    unfrozen at epoch 1 (so there are two LR param groups), then tested. Returns its run folder."""
    from genre_lightning.cli.train import train

    run = tmp_path_factory.mktemp("tiny_run")
    train(
        train_config(
            poster_root,
            run,
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=3",
            "data.batch_size=16",
            "finetune=head_then_all",
            "finetune.milestones=[1]",
        )
    )
    return run


@pytest.fixture
def locked_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any folder named ``locked`` cannot be listed (PermissionError), as a mode-000 folder for a
    normal user: the tests run as root, which reads such a folder anyway."""
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.fixture(scope="session")
def big_posters(tmp_path_factory) -> Path:
    """Posters larger than the model input, so the cache really shrinks them."""
    return ensure_demo_posters(tmp_path_factory.mktemp("big") / "posters", per_class=6, size=(96, 144), seed=1)
