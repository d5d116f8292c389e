"""ONNX exports of checkpoints, made on first use and kept in a cache folder.

An entry is named by the checkpoint's content hash (``Predictor.identity["sha256"]``: a changed
checkpoint gets a new entry) and a digest of what else shapes the graph (flip TTA, the torch,
onnx and onnxruntime versions, this module's format), so it is re-exported when any of them
changes. Inside an entry:

* ``model.onnx`` and ``float32.json``: the export and its parity record (the largest logit
  difference on the first batch it was made for, as ``genre-export`` measures it). A failed
  export or parity check is recorded too, so later runs fall back to torch at once;
* ``model.int8.onnx`` and ``int8.json``: the static int8 quantisation (``quantize.py``).

Concurrent first uses (several processes, a server's threads) are safe: a file lock per entry lets
one of them export while the others wait and then read its result, and every file is written under
a temporary name and renamed into place, so a reader never sees half a model. The record is written
last: an entry without it is incomplete (an interrupted export) and is made again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from genre_lightning.inference.onnx_model import PARITY_TOLERANCE, export_onnx, max_logit_difference, onnx_logits
from genre_lightning.models.tta import TTA

log = logging.getLogger(__name__)

CACHE_ENV = "GENRE_LIGHTNING_CACHE"
# Bump when the export changes in a way the versions below do not capture.
FORMAT = 1
FLOAT_MODEL, FLOAT_RECORD = "model.onnx", "float32.json"
INT8_MODEL, INT8_RECORD = "model.int8.onnx", "int8.json"


def cache_folder(cache_dir: str | Path | None = None) -> Path:
    """Where exports are kept: ``cache_dir``; else ``$GENRE_LIGHTNING_CACHE/onnx``; else
    ``$XDG_CACHE_HOME/genre-lightning/onnx`` (``~/.cache/genre-lightning/onnx``)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "onnx"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "genre-lightning" / "onnx"


def entry_folder(cache_dir: str | Path | None, checkpoint_sha256: str, tta: TTA | bool) -> Path:
    """The entry of one checkpoint's network: ``<content hash>-<digest of the export's settings>``
    (the test-time views are baked into the graph: another ``tta`` is another entry)."""
    views = tta if isinstance(tta, TTA) else TTA(hflip=bool(tta))
    import onnx
    import onnxruntime

    settings = {
        "format": FORMAT,
        "tta_hflip": views.hflip,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    if not views.flip_only:  # (flip alone keeps the digest of the entries made before model.tta)
        settings["tta"] = views.to_dict()
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return cache_folder(cache_dir) / f"{checkpoint_sha256}-{digest}"


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the entry's lock: one process or thread at a time makes its files (``flock`` is
    per open file, so two threads of one process exclude each other too)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` a temporary file beside ``path``, then rename it into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_record(path: Path, record: dict[str, Any]) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2)))


def cached(folder: Path, record_name: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The entry's record ``record_name``, made by ``make`` (under the lock) when it is not there yet."""
    record = read_record(folder / record_name)
    if record is not None:
        return record
    with locked(folder):
        record = read_record(folder / record_name)  # another process may have made it meanwhile
        if record is None:
            record = make()
            write_record(folder / record_name, record)
    return record


def make_float_export(folder: Path, network: nn.Module, images: torch.Tensor, reference: np.ndarray) -> dict[str, Any]:
    """Export ``network`` into the entry now (the caller holds its lock) and measure its parity: the
    record ``float_export`` keeps (``passed``, ``max_abs_logit_diff``, or ``error``)."""
    log.info("Exporting the checkpoint to ONNX for onnxruntime (once per checkpoint; cache %s)", folder)
    started = time.perf_counter()
    model = folder / FLOAT_MODEL
    try:
        write_atomically(model, lambda tmp: export_onnx(network, tmp, images.contiguous()))
        difference = max_logit_difference(onnx_logits, model, images.cpu(), reference)
    except Exception as err:  # a network the exporter cannot handle: predicting with torch still works
        return {"passed": False, "error": f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"}
    return {
        "passed": bool(difference < PARITY_TOLERANCE),
        "max_abs_logit_diff": difference,
        "tolerance": PARITY_TOLERANCE,
        "images": len(images),
        "export_seconds": round(time.perf_counter() - started, 1),
    }


def float_export(folder: Path, network: nn.Module, images: torch.Tensor, reference: np.ndarray) -> dict[str, Any]:
    """The entry's float32 model, exported now if needed, with its parity record: ``passed``,
    ``max_abs_logit_diff`` on ``images`` against the network's logits ``reference``, or ``error``."""
    return cached(folder, FLOAT_RECORD, lambda: make_float_export(folder, network, images, reference))


def int8_export(folder: Path, calibration: Callable[[], list[torch.Tensor]], describe: dict[str, Any]) -> dict:
    """The entry's int8 model (from its float32 model), quantised now if needed: ``calibration``
    gives the calibration batches; ``describe`` (which images) goes into the record."""
    from genre_lightning.inference.quantize import quantize_int8

    def make() -> dict[str, Any]:
        log.info("Quantising the ONNX model to int8 (once per checkpoint; cache %s)", folder)
        started = time.perf_counter()
        write_atomically(folder / INT8_MODEL, lambda tmp: quantize_int8(folder / FLOAT_MODEL, tmp, calibration()))
        return {**describe, "quantise_seconds": round(time.perf_counter() - started, 1)}

    return cached(folder, INT8_RECORD, make)
