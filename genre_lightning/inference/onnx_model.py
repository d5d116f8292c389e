"""A network as an ONNX file: export it (PyTorch's torch.export-based exporter), run it in
onnxruntime, and measure how closely it reproduces the network.

Used by ``genre-export format=onnx`` (``export.py``) and by the onnxruntime backend, which exports
a checkpoint on first use (``onnx_cache.py``); both check the same parity in the same way.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from genre_lightning.utils.errors import UserFacingError

INPUT_NAME, OUTPUT_NAME = "image", "logits"
# The largest max |logit difference| between an export and its network that is accepted.
PARITY_TOLERANCE = 1e-4
EXPORT_EXTRA = "pip install 'genre-lightning[export]'"


def have_onnxruntime() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def can_export_onnx() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))


def export_onnx(network: nn.Module, path: Path, example: torch.Tensor) -> None:
    """Write ``network`` as one self-contained ONNX file whose batch axis is dynamic."""
    if not can_export_onnx():
        raise UserFacingError(f"format=onnx needs onnx and onnxscript: {EXPORT_EXTRA}")
    if len(example) < 2:  # torch.export specialises a batch of 1 and then refuses the dynamic batch axis
        example = example.expand(2, *example.shape[1:]).contiguous()
    for name in ("onnxscript", "onnx_ir"):  # their optimiser logs every pass at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            network,
            (example,),
            str(path),
            dynamo=True,  # torch.export-based exporter (the default since torch 2.9)
            external_data=False,  # one self-contained file
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )


def onnx_session(path: Path, threads: int | None = None, spinning: bool = True) -> Any:
    """An onnxruntime CPU session for ``path``: ``threads`` intra-op threads (None: onnxruntime's
    default, one per core); ``spinning=False`` lets idle threads sleep instead of busy-waiting,
    which leaves the cores to the decode threads between batches."""
    if not have_onnxruntime():
        raise UserFacingError(f"onnxruntime is not installed: {EXPORT_EXTRA}")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its optimiser's notices are not the user's concern
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session: Any, images: torch.Tensor) -> np.ndarray:
    """The logits of a float32 NCHW batch."""
    pixels = images.detach().to("cpu", torch.float32).contiguous().numpy()
    return session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]


def onnx_logits(path: Path, images: torch.Tensor) -> np.ndarray:
    return run_session(onnx_session(path), images)


def max_logit_difference(
    run: Callable[[Path, torch.Tensor], np.ndarray], artifact: Path, images: torch.Tensor, reference: np.ndarray
) -> float:
    """The largest absolute difference between ``run(artifact, ...)`` and the network's logits
    (``reference``), for the whole batch and for one image alone: the batch axis is dynamic, and
    a server often sends one image."""
    return max(
        float(np.abs(run(artifact, images) - reference).max()),
        float(np.abs(run(artifact, images[:1]) - reference[:1]).max()),
    )


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask: a Slurm job's share, a container's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
