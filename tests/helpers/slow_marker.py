"""A pytest plugin (tests/conftest.py loads it) that keeps the ``slow`` marker true: a test that
trains a model or starts a console script, itself or through a fixture, must be marked
``@pytest.mark.slow``, so that ``pytest -m "not slow"`` (README) leaves out every end-to-end run.

What counts: ``lightning.pytorch.Trainer.fit`` taking an optimizer step in this process, or a new
process running one of our console scripts (``genre-*``), a module of ours (``python -m
genre_lightning...`` or ``tests.helpers...``) or a script of the repository (``bench/``,
``scripts/``). A fixture that did either marks every test that uses it, also where it was set up
for an earlier test.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightning.pytorch import Trainer

from tests.helpers.paths import REPO

_doing: list[str] = []  # what the current test or fixture did, cleared at each start
_fixtures_that_run: dict[str, str] = {}  # fixture name -> what it did


def activity() -> list[str]:
    """What the current test or fixture did so far (trained, started our code), for tests/helpers/shared.py:
    a fixture that reuses what another xdist worker made notes what making it did."""
    return _doing


def _starts_our_code(command: list[str], cwd: str | None) -> bool:
    """A console script of ours, or a Python interpreter (perhaps behind a wrapper such as setpriv)
    running a module or a script of ours."""
    if Path(command[0]).name.startswith("genre-"):
        return True
    for i, arg in enumerate(command):
        if Path(arg).name.startswith("python"):
            rest = command[i + 1 :]
            if rest[:1] == ["-m"]:
                return len(rest) > 1 and rest[1].startswith(("genre_lightning", "tests"))
            if rest and rest[0].endswith(".py"):
                return (Path(cwd or os.getcwd()) / rest[0]).resolve().is_relative_to(REPO)
            return False
    return False


def _audit(event: str, args: tuple) -> None:
    if event == "subprocess.Popen":
        _, command, cwd, _ = args
        command = [os.fsdecode(a) for a in ([command] if isinstance(command, str | bytes | os.PathLike) else command)]
        if command and _starts_our_code(command, os.fsdecode(cwd) if cwd is not None else None):
            _doing.append(f"starts {' '.join(command)[:120]}")


def pytest_configure(config: pytest.Config) -> None:
    sys.addaudithook(_audit)
    fit = Trainer.fit

    @functools.wraps(fit)
    def noting_fit(self, *args, **kwargs):
        try:
            return fit(self, *args, **kwargs)
        finally:  # a fit that stops at a config error before its first step does not count
            if self.global_step > 0:
                _doing.append("trains (Trainer.fit)")

    Trainer.fit = noting_fit


def _complain(item: pytest.Item, what: str) -> None:
    if item.get_closest_marker("slow") is None:
        pytest.fail(
            f"{item.nodeid} {what}: mark it @pytest.mark.slow (README: -m 'not slow' leaves out end-to-end runs)",
            pytrace=False,
        )


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef, request: pytest.FixtureRequest) -> Iterator[None]:
    outer = list(_doing)
    _doing.clear()
    try:
        return (yield)
    finally:
        if _doing:
            _fixtures_that_run[fixturedef.argname] = _doing[0]
        _doing[:0] = outer


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    _doing.clear()
    result = yield
    for name in item.fixturenames:
        if name in _fixtures_that_run:
            _complain(item, f"uses the fixture {name!r}, which {_fixtures_that_run[name]}")
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    _doing.clear()
    try:
        return (yield)
    finally:
        if _doing:
            _complain(item, _doing[0])
