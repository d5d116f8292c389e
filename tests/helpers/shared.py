"""Folders made once per test session and shared by its pytest-xdist workers (tests/conftest.py's
session fixtures): the first worker to ask makes the folder while the others wait on a file lock;
later askers get it as it is. The tests only read these folders."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock


def session_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of this session: with xdist, the parent of the workers' own ``popen-gw<N>`` folders."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_folder(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], object]) -> Path:
    """``<session>/<name>``, made by ``make(folder)`` once for all workers."""
    from tests.helpers.slow_marker import activity  # here: pytest loads the plugin first (conftest.py)

    root = session_root(tmp_path_factory)
    folder, done = root / name, root / f"{name}.done"
    with FileLock(root / f"{name}.lock"):
        if done.exists():  # made by another worker: note what making it did (tests/helpers/slow_marker.py)
            activity().extend(done.read_text().splitlines())
        else:
            before = len(activity())
            make(folder)
            done.write_text("\n".join(activity()[before:]))
    return folder
