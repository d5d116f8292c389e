"""Run the console scripts as a user does (a new process), or their functions in this process."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import IO

from hydra.core.global_hydra import GlobalHydra


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
    ~10 s of imports. For every test but the one per command that runs the console script as a
    user does (``run_cli``), and those that need a process of their own (DDP, an environment
    read at import)."""
    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == args[0]]
    out, err, code = io.StringIO(), io.StringIO(), 0
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    GlobalHydra.instance().clear()
    try:
        os.chdir(cwd)
        sys.argv = [args[0], *args[1:]]
        with _logging_as_it_was(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            entry.load()()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        GlobalHydra.instance().clear()
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def _loggers() -> list[logging.Logger]:
    named = [v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger)]
    return [logging.getLogger(), *named]


@contextlib.contextmanager
def _logging_as_it_was() -> Iterator[None]:
    """Give every logger back its level, handlers and switch afterwards: Hydra configures logging
    for the run (genre-report's ``hydra/job_logging: disabled`` switches off every existing logger),
    which in a process of its own would end with it, not last into the tests after it."""
    saved = {lg: (lg.level, lg.disabled, lg.propagate, list(lg.handlers)) for lg in _loggers()}
    try:
        yield
    finally:
        for lg in _loggers():
            if lg not in saved:  # made during the run: on as a new logger is
                lg.disabled = False
                continue
            level, lg.disabled, lg.propagate, handlers = saved[lg]
            for handler in set(lg.handlers) - set(handlers):
                handler.close()
            lg.setLevel(level)
            lg.handlers = handlers
