"""Folders made once per test session and shared by its pytest-xdist workers (tests/conftest.py's
session fixtures): the first worker to ask makes the folder while the others wait on a file lock;
later askers get it as it is. The tests only read these folders: ``assert_unchanged`` (run after
each test that uses one) names a test that wrote into one, which would change it for every worker."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock


def session_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of this session: with xdist, the parent of the workers' own ``popen-gw<N>`` folders."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _contents(folder: Path) -> dict[str, list[int]]:
    """Every file and link under ``folder``: [size, mtime in ns]."""
    contents = {}
    for directory, _, files in os.walk(folder):
        for name in files:
            info = os.lstat(os.path.join(directory, name))
            contents[os.path.relpath(os.path.join(directory, name), folder)] = [info.st_size, info.st_mtime_ns]
    return contents


def shared_folder(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], object]) -> Path:
    """``<session>/<name>``, made by ``make(folder)`` once for all workers."""
    from tests.helpers.slow_marker import activity  # here: pytest loads the plugin first (conftest.py)

    root = session_root(tmp_path_factory)
    folder, done = root / name, root / f"{name}.done"
    with FileLock(root / f"{name}.lock"):
        if done.exists():  # made by another worker: note what making it did (tests/helpers/slow_marker.py)
            activity().extend(json.loads(done.read_text())["activity"])
        else:
            before = len(activity())
            make(folder)
            done.write_text(json.dumps({"activity": activity()[before:], "contents": _contents(folder)}))
    return folder


def assert_unchanged(folder: Path) -> None:
    """``folder`` holds what it held when it was made (each file's size and mtime)."""
    made = json.loads(folder.with_name(f"{folder.name}.done").read_text())["contents"]
    now = _contents(folder)
    changed = sorted(set(made) ^ set(now) | {path for path in set(made) & set(now) if made[path] != now[path]})
    assert not changed, f"this test changed the shared folder {folder} (for every test after it): {changed[:5]}"
