"""The ONNX export of a checkpoint made in a detached process, so the first prediction on a new
checkpoint does not wait for it (``backend=auto``: tens of seconds on a CPU, minutes for an ensemble).

The predicting process takes the cache entry's lock without waiting (``onnx_cache.locked``'s file)
and hands it to the export process it starts: the lock is held from the moment the export is
decided until its record is written, so two first calls never export twice, and a process that
waits for the entry (``backend=onnxruntime``) waits for this export. The export process writes the
model and then its record under temporary names renamed into place (``onnx_cache``), so nothing
half-written is ever loaded. It leaves ``background.json`` while it runs and its output in
``export.log``; an export that died without a record (killed, out of memory) is reported by the
next call, which starts it again. A failed export or parity check is recorded as in the foreground,
and the next call falls back to torch with the same warning.

The export process is ``export_job.py``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from genre_lightning.inference.onnx_cache import FLOAT_RECORD, read_record, write_record
from genre_lightning.models.tta import TTA

log = logging.getLogger(__name__)

STATE, LOG, IMAGES = "background.json", "export.log", "parity-images.pt"
LOCK_FD_ENV = "GENRE_LIGHTNING_EXPORT_LOCK_FD"
JOB = "genre_lightning.inference.export_job"


def start(folder: Path, checkpoint: str, tta: TTA, channels_last: bool, images: torch.Tensor) -> bool:
    """Start the export of ``checkpoint`` into the cache entry ``folder`` in a detached process, its
    parity checked on ``images`` (a preprocessed batch); False if one is running already."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = os.open(folder / ".lock", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another process exports (or reads) this entry now
        if read_record(folder / FLOAT_RECORD) is not None:  # made while this process looked
            return False
        torch.save(images[:8].detach().cpu().contiguous().clone(), folder / IMAGES)
        state = {"pid": None, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "checkpoint": checkpoint}
        command = [
            sys.executable,
            "-m",
            JOB,
            str(folder),
            checkpoint,
            json.dumps(tta.to_dict()),  # the views baked into the graph, as the predicting process has them
            str(int(channels_last)),
        ]
        with open(folder / LOG, "w") as output:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                pass_fds=(lock,),  # the lock stays held by the export process after this one closes it
                env={**os.environ, LOCK_FD_ENV: str(lock)},
                start_new_session=True,  # detached: a Ctrl-C on the command does not stop the export
            )
        write_record(folder / STATE, {**state, "pid": process.pid})
        return True
    finally:
        os.close(lock)


def died_earlier(folder: Path) -> str | None:
    """A message when an earlier background export of this entry stopped without writing its record
    (the lock is free, so it is not running); None otherwise. The leftover state is removed."""
    state = read_record(folder / STATE)
    if state is None or read_record(folder / FLOAT_RECORD) is not None:
        return None
    lock = os.open(folder / ".lock", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return None  # still running
    else:
        (folder / STATE).unlink(missing_ok=True)
        tail = _last_line(folder / LOG)
        started = state.get("started")
        return f"the background ONNX export started {started} stopped without a result ({tail}; log: {folder / LOG})"
    finally:
        os.close(lock)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "empty log"
