"""Shared fixtures: generated posters (real JPEGs), composed configs, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from genre_lightning.data.demo import ensure_demo_posters
from genre_lightning.runtime import CONFIG_DIR

# Small, fast settings for every training run in the tests: a random-init resnet10t at 32 px.
FAST = [
    "model=tiny",
    "model.data_config.input_size=[3,32,32]",
    "trainer=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "print_config=false",
]


def require(available: bool, reason: str) -> None:
    """Skip when something optional is missing on a developer machine; under CI=true, fail instead."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: this test must run, not skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def poster_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic posters, 30 per genre, 48x72 JPEGs in genre folders."""
    return ensure_demo_posters(tmp_path_factory.mktemp("data") / "posters", per_class=30, size=(48, 72), seed=0)


def compose_config(config_name: str, overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """Compose a config like the CLI does, with the run folder set to ``output_dir``."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.root_dir = str(output_dir)
        cfg.paths.output_dir = str(output_dir)
    return cfg


def train_config(poster_root: Path, output_dir: Path, *overrides: str) -> DictConfig:
    return compose_config("train", [*FAST, f"data.root={poster_root}", *overrides], output_dir)


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a console script (e.g. ``genre-train``) from this environment, as a user would."""
    executable = Path(sys.executable).parent / args[0]
    return subprocess.run(
        [str(executable), *args[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
