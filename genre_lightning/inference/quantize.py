"""int8: onnxruntime's static quantisation of an exported model, and what it changes.

The activations' ranges are calibrated on training posters of the checkpoint's own split (the
images the model was fitted to, never its test posters); weights are quantised per channel. int8
does not reproduce the float32 logits, so instead of a parity check it is measured: the share of
test posters whose top genre is unchanged, and the test accuracy of each (``compare``), printed by
``genre-export precision=int8`` and by the benchmark. It is opt-in (``precision=int8``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genre_lightning.data.annotations import read_split_file
from genre_lightning.data.split_choice import checkpoint_split
from genre_lightning.inference.decode import decoded_batches
from genre_lightning.inference.onnx_model import INPUT_NAME
from genre_lightning.utils.errors import ConfigError

CALIBRATION_IMAGES = 128
CALIBRATION_BATCH = 16


def split_posters(
    ckpt_path: str | Path, classes: Sequence[str], split: str, purpose: str
) -> tuple[list[str], list[str]]:
    """The files of one split of the run ``ckpt_path`` belongs to, and their genres (``labels``:
    every genre joined by ``|``); a one-line error saying ``purpose`` when the run has no split file."""
    split_file = checkpoint_split(ckpt_path)
    if split_file is None:
        raise ConfigError("ckpt_path", str(ckpt_path), f"a checkpoint with its run's annotations.csv ({purpose})")
    frame = read_split_file(split_file, classes)
    rows = frame[frame["split"] == split]
    return list(rows["file_path"]), list(rows["labels"])


def calibration_paths(ckpt_path: str | Path, classes: Sequence[str], count: int = CALIBRATION_IMAGES) -> list[str]:
    """``count`` training posters spread evenly over the training split (its order mixes the genres)."""
    paths, _ = split_posters(ckpt_path, classes, "train", "precision=int8 calibrates on its training posters")
    if not paths:
        raise ConfigError("precision", "int8", "a checkpoint whose split has training posters to calibrate on")
    step = max(1, len(paths) // count)
    return paths[::step][:count]


def image_batches(paths: Sequence[str], transform: Callable, batch_size: int = CALIBRATION_BATCH) -> list[torch.Tensor]:
    """The readable images of ``paths`` through ``transform``, in batches (unreadable files are left out)."""
    return [batch.images for batch in decoded_batches(paths, transform, batch_size, workers=0) if batch.index.numel()]


def quantize_int8(float_model: Path, output: Path, batches: list[torch.Tensor]) -> None:
    """Write ``float_model`` statically quantised to int8 (QDQ format, weights per channel,
    activation ranges from ``batches``)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch.numpy()}

    prepared = output.with_name(output.name + ".prepared.onnx")
    quiet = QuantiserNotices()
    logging.getLogger().addFilter(quiet)  # the quantiser logs a line per adjusted weight on the root logger
    try:
        # Shapes inferred and the graph optimised first (BatchNorm folded), as onnxruntime recommends.
        quant_pre_process(str(float_model), str(prepared))
        quantize_static(
            str(prepared),
            str(output),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    finally:
        logging.getLogger().removeFilter(quiet)
        prepared.unlink(missing_ok=True)


class QuantiserNotices(logging.Filter):
    """Drops onnxruntime's quantiser's INFO lines (hundreds of "Increased scale[...]"); its warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        inside = f"onnxruntime{os.sep}quantization" in record.pathname
        return record.levelno >= logging.WARNING or not inside


def compare(
    reference: np.ndarray, quantised: np.ndarray, labels: Sequence[str], classes: Sequence[str], seed: int = 0
) -> dict[str, Any]:
    """int8 against float32 on labelled images: the share with the same top genre, each top-1 accuracy
    (the top genre is one of the image's ``labels``, genres joined by ``|``), and the accuracy
    difference with a 95% paired bootstrap interval."""
    truth = [set(label.split("|")) for label in labels]
    float_top = reference.argmax(axis=1)
    int8_top = quantised.argmax(axis=1)
    float_right = np.array([classes[i] in genres for i, genres in zip(float_top, truth, strict=True)], float)
    int8_right = np.array([classes[i] in genres for i, genres in zip(int8_top, truth, strict=True)], float)
    resamples = np.random.default_rng(seed).integers(0, len(truth), size=(2000, len(truth)))
    differences = (int8_right[resamples] - float_right[resamples]).mean(axis=1)
    low, high = np.percentile(differences, [2.5, 97.5])
    return {
        "images": len(truth),
        "top1_agreement": float((float_top == int8_top).mean()),
        "accuracy_float32": float(float_right.mean()),
        "accuracy_int8": float(int8_right.mean()),
        "accuracy_change": float(int8_right.mean() - float_right.mean()),
        "accuracy_change_95ci": [float(low), float(high)],
    }


def describe(comparison: dict[str, Any]) -> str:
    """One line: int8's agreement and accuracy change, as genre-export and the benchmark print it."""
    low, high = comparison["accuracy_change_95ci"]
    return (
        f"int8 against float32 on {comparison['images']} test posters: same top-1 for "
        f"{comparison['top1_agreement']:.1%}; accuracy {comparison['accuracy_float32']:.1%} -> "
        f"{comparison['accuracy_int8']:.1%} ({100 * comparison['accuracy_change']:+.1f} points, "
        f"95% paired bootstrap interval {100 * low:+.1f} to {100 * high:+.1f})"
    )
