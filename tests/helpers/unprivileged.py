"""Python code run by a process that file permissions apply to, for the tests of unreadable folders.

The tests run as root here and in CI, and root lists a mode-000 folder anyway. As root, the code
runs without the two capabilities that bypass permission checks (CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH, dropped with util-linux's ``setpriv``): the kernel then checks the folder's
mode as it does for any user, and a mode-000 folder cannot be listed. (Switching to ``nobody``
would not work here: the interpreter lives under /root, which only root may read.) As a normal
user the code runs as that user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers.optional import require

DROP = "-dac_override,-dac_read_search"


@contextmanager
def locked(folder: Path) -> Iterator[Path]:
    """``folder`` with mode 000 (nobody may list or enter it), given back its mode afterwards."""
    mode = folder.stat().st_mode
    folder.chmod(0)
    try:
        yield folder
    finally:
        folder.chmod(mode)


def run_python(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -c code args...`` as an unprivileged process (see the module docstring)."""
    command = [sys.executable, "-c", code, *args]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        require(setpriv is not None, "setpriv (util-linux) is not installed: root would read a mode-000 folder")
        command = [setpriv, f"--bounding-set={DROP}", *command]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
