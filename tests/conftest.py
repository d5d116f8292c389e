"""Shared fixtures: generated posters (real JPEGs), composed configs, and a CLI runner."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest
from omegaconf import DictConfig

from genre_lightning.data.demo import ensure_demo_posters
from genre_lightning.runtime import compose_config

# Small, fast settings for every run in the tests: conf/debug/tests.yaml (a random-init resnet10t at
# 32 px on the CPU), the same as `genre-train debug=tests` on the command line.
FAST = ["debug=tests"]


def have_module(name: str) -> bool:
    """Whether ``name`` can be imported; False (not an error) when a parent package is missing too
    (``find_spec("hydra_plugins.x")`` raises ModuleNotFoundError without any hydra plugin)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


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


def train_config(poster_root: Path, output_dir: Path, *overrides: str) -> DictConfig:
    return compose_config("train", [*FAST, f"data.root={poster_root}", *overrides], output_dir)


def run_cli(
    *args: str, cwd: Path, env: dict | None = None, timeout: int = 600, stdout: IO | None = None
) -> subprocess.CompletedProcess:
    """Run a console script (e.g. ``genre-train``) from this environment, as a user would; with
    ``stdout`` (an open file) its output goes there, as in ``genre-train ... > log``."""
    executable = Path(sys.executable).parent / args[0]
    return subprocess.run(
        [str(executable), *args[1:]],
        cwd=cwd,
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def run_entry_point(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a console script's function (the one ``genre-train`` etc. call) in this process, with
    ``sys.argv`` as the script would have it: the same code path without a new interpreter's
    ~10 s of imports. For the tests of what happens before any training (config errors)."""
    import contextlib
    import io
    from importlib.metadata import entry_points

    from hydra.core.global_hydra import GlobalHydra

    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == args[0]]
    out, err, code = io.StringIO(), io.StringIO(), 0
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    GlobalHydra.instance().clear()
    try:
        os.chdir(cwd)
        sys.argv = [args[0], *args[1:]]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            entry.load()()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        GlobalHydra.instance().clear()
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def tiny_run(poster_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short real run, shared by the results and export tests: 2 epochs of 3 batches, the backbone
    unfrozen at epoch 1 (so there are two LR param groups), then tested. Returns its run folder."""
    from genre_lightning.train import train

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
