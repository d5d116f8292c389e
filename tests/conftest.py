"""Shared fixtures: generated posters (real JPEGs) and one short real run; helpers are in tests/helpers/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from genre_lightning.data.demo import ensure_demo_posters
from tests.helpers.configs import train_config
from tests.helpers.shared import assert_unchanged, shared_folder

# Tests that train or start a console script must be marked slow (tests/helpers/slow_marker.py).
pytest_plugins = ["tests.helpers.slow_marker"]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker and the processes its tests start share the cores with the
    other workers: one compute thread per worker on 2 cores with 2 workers (OMP_NUM_THREADS, which
    the started processes inherit). Two threads per worker would oversubscribe the cores, and
    torch's threads then wait for each other. An OMP_NUM_THREADS set by the caller is kept."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // int(workers)))
    if workers:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


# The test files that take longest, longest first (their tests' durations summed, `pytest --durations=0`).
# pytest-xdist gives each worker whole files (--dist loadfile) in collection order (--no-loadscope-reorder,
# pyproject.toml): the long ones start first and short ones are left for the end, so the two workers
# finish together. Other files follow in their usual order.
LONGEST_FIRST = [
    # marked long (their own step, python -m pytest -q -m long)
    "tests/training/test_ddp_matrix.py",
    "tests/bench/test_bench_smoke.py",
    "tests/launch/test_slurm.py",  # mostly waiting for the Slurm jobs
    "tests/results/test_cross_validation.py",
    "tests/launch/test_search.py",  # a search killed and continued, then its report
    # the default run, longest first (--durations)
    "tests/cli/test_end_to_end.py",
    "tests/results/test_tracking.py",
    "tests/training/test_multilabel.py",
    "tests/training/test_probe.py",
    "tests/cli/test_train.py",
    "tests/launch/test_sweep.py",
    "tests/inference/test_ensemble.py",
    "tests/training/test_ddp.py",
    "tests/data/test_shards.py",
    "tests/cli/test_predict.py",
    "tests/training/test_feature_cache.py",
    "tests/results/test_run_artifacts.py",
    "tests/inference/test_server.py",
    "tests/inference/test_explain.py",
    "tests/results/test_sweep_report.py",
    "tests/data/test_intake_pipeline.py",
    "tests/cli/test_many_genres.py",
    "tests/training/test_training_options.py",
    "tests/training/test_finetune.py",
    "tests/training/test_epoch_progress.py",
]


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    if config.getoption("markexpr") == "not long":  # the default run: say where the rest is
        terminalreporter.write_line("Tests marked long were left out: python -m pytest -q -m long runs them.")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order


SHARED_FOLDERS = ("poster_root", "big_posters", "tiny_run")


@pytest.fixture(autouse=True)
def _shared_folders_stay_as_made(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used a session folder every worker shares: the folder is as it was made."""
    yield
    for name in SHARED_FOLDERS:
        if name in request.fixturenames:
            assert_unchanged(request.getfixturevalue(name))


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONNX exports made on first use (backend=auto) go to a folder of this session, not to ~/.cache;
    the commands the tests start inherit it."""
    folder = tmp_path_factory.mktemp("genre-lightning-cache")
    os.environ["GENRE_LIGHTNING_CACHE"] = str(folder)
    return folder / "onnx"


@pytest.fixture(scope="session")
def poster_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic posters, 30 per genre, 48x72 JPEGs in genre folders (made once for all workers)."""
    return shared_folder(
        tmp_path_factory, "posters", lambda folder: ensure_demo_posters(folder, per_class=30, size=(48, 72), seed=0)
    )


@pytest.fixture(scope="session")
def tiny_run(poster_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short real run, shared by the results and export tests: 2 epochs of 3 batches, the backbone
    unfrozen at epoch 1 (so there are two LR param groups), then tested. Returns its run folder
    (made once for all workers)."""
    from genre_lightning.cli.train import train

    def make(run: Path) -> None:
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

    return shared_folder(tmp_path_factory, "tiny_run", make)


@pytest.fixture(scope="session")
def big_posters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Posters larger than the model input, so the cache really shrinks them (made once for all workers)."""
    return shared_folder(
        tmp_path_factory, "big_posters", lambda folder: ensure_demo_posters(folder, per_class=6, size=(96, 144), seed=1)
    )
