"""Configs as the commands compose them, with the test suite's fast settings."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from genre_lightning.cli.common import compose_config

# Small, fast settings for every run in the tests: conf/debug/tests.yaml (a random-init test_resnet at
# 32 px on the CPU), the same as `genre-train debug=tests` on the command line.
FAST = ["debug=tests"]
TEST_BACKBONE = "test_resnet"  # conf/debug/tests.yaml's: timm's 0.37M-parameter ResNet made for tests

__all__ = ["FAST", "TEST_BACKBONE", "compose_config", "train_config"]


def train_config(poster_root: Path, output_dir: Path, *overrides: str) -> DictConfig:
    return compose_config("train", [*FAST, f"data.root={poster_root}", *overrides], output_dir)
