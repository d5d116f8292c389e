"""Configs as the commands compose them, with the test suite's fast settings."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from genre_lightning.cli.common import compose_config

# Small, fast settings for every run in the tests: conf/debug/tests.yaml (a random-init resnet10t at
# 32 px on the CPU), the same as `genre-train debug=tests` on the command line.
FAST = ["debug=tests"]

__all__ = ["FAST", "compose_config", "train_config"]


def train_config(poster_root: Path, output_dir: Path, *overrides: str) -> DictConfig:
    return compose_config("train", [*FAST, f"data.root={poster_root}", *overrides], output_dir)
