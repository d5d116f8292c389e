"""Export a checkpoint as an ONNX or TorchScript file a server can load without this project.

Beside the artifact goes ``<artifact>.json`` (the sidecar): the class names in output order, the
task and its decision thresholds or temperature, and the preprocessing (input size, interpolation, mean, std,
crop, and the exact torchvision pipeline). The export is checked on real posters: the largest
absolute logit difference against the model is measured, as a batch and as one image.

``precision="int8"`` (ONNX) also writes ``<name>.int8.onnx``, onnxruntime's static quantisation
calibrated on training posters of the checkpoint's split, with its top-1 agreement and accuracy
against float32 on the test posters in its sidecar (``quantize.py``).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from genre_lightning.data.annotations import read_split_file
from genre_lightning.data.split_choice import evaluation_split
from genre_lightning.inference.batch import list_inputs
from genre_lightning.inference.decode import decoded_batches
from genre_lightning.inference.onnx_model import (
    INPUT_NAME,
    OUTPUT_NAME,
    export_onnx,
    max_logit_difference,
    onnx_logits,
    onnx_session,
    run_session,
)
from genre_lightning.inference.predictor import Predictor
from genre_lightning.inference.quantize import calibration_paths, compare, image_batches, quantize_int8, split_posters
from genre_lightning.utils.errors import ConfigError

log = logging.getLogger(__name__)

SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
PRECISIONS = ("32", "int8")


def parity_batch(predictor: Predictor, ckpt_path: str | Path, parity_input: str | None, count: int) -> torch.Tensor:
    """Up to ``count`` real images through the model's eval transform: from ``parity_input``, or
    else from the test split of the run the checkpoint belongs to."""
    if parity_input:
        paths = list_inputs(parity_input, key="parity_input")
    else:
        try:
            split = read_split_file(evaluation_split(ckpt_path, None), predictor.classes)
        except ConfigError:
            raise ConfigError(
                "parity_input", None, "a file or folder of images (there is no annotations.csv beside the checkpoint)"
            ) from None
        paths = list(split.loc[split["split"] == "test", "file_path"]) or list(split["file_path"])
    candidates = paths[: count * 2]  # spares in case some files cannot be read
    batches = image_batches(candidates, predictor.eval_transform, batch_size=len(candidates))
    if not batches:
        raise ConfigError("parity_input", parity_input, "a file or folder with at least one readable image")
    return batches[0][:count]


def export_torchscript(network: nn.Module, path: Path, example: torch.Tensor) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; said once below instead
        torch.jit.save(torch.jit.trace(network, example), str(path))
    log.warning("TorchScript (torch.jit) is deprecated in PyTorch 2.14; format=onnx is the supported path")


def torchscript_logits(path: Path, images: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return module(images).numpy()


Exporter = tuple[Callable[[nn.Module, Path, torch.Tensor], None], Callable[[Path, torch.Tensor], np.ndarray]]
EXPORTERS: dict[str, Exporter] = {
    "onnx": (export_onnx, onnx_logits),
    "torchscript": (export_torchscript, torchscript_logits),
}


@dataclass
class Export:
    """What an export wrote and how closely it reproduces the model."""

    artifact: Path
    sidecar_path: Path
    sidecar: dict[str, Any]
    max_abs_logit_diff: float
    passed: bool
    # precision="int8": the quantised artifact, its sidecar, and quantize.compare's figures.
    int8_artifact: Path | None = None
    int8_sidecar_path: Path | None = None
    int8: dict[str, Any] = field(default_factory=dict)


def export_checkpoint(
    ckpt_path: str | Path,
    fmt: str,
    output: Path,
    parity_input: str | None = None,
    parity_images: int = 16,
    tolerance: float = 1e-4,
    precision: str = "32",
) -> Export:
    """Write ``output`` (the artifact) and its sidecar, and measure the parity on real posters;
    with ``precision="int8"`` (ONNX) also the quantised artifact, measured on the test posters."""
    if fmt not in EXPORTERS:
        raise ConfigError("format", fmt, f"one of {sorted(EXPORTERS)}")
    if str(precision) not in PRECISIONS or (str(precision) == "int8" and fmt != "onnx"):
        raise ConfigError("precision", precision, "32, or int8 with format=onnx")
    predictor = Predictor.from_checkpoint(ckpt_path, channels_last=False, backend="torch")
    calibration = calibration_paths(ckpt_path, predictor.classes) if str(precision) == "int8" else []
    images = parity_batch(predictor, ckpt_path, parity_input, parity_images)
    output.parent.mkdir(parents=True, exist_ok=True)
    save, run = EXPORTERS[fmt]
    save(predictor.network, output, images)
    difference = max_logit_difference(run, output, images, predictor.logits(images).numpy())
    passed = difference < tolerance
    parity = {"images": len(images), "max_abs_logit_diff": difference, "tolerance": tolerance, "passed": passed}
    result = sidecar(predictor, fmt, output, ckpt_path, parity)
    sidecar_path = output.with_name(output.name + ".json")
    sidecar_path.write_text(json.dumps(result, indent=2))
    done = Export(output, sidecar_path, result, difference, passed)
    if calibration and passed:
        export_int8(done, predictor, ckpt_path, calibration)
    return done


def export_int8(done: Export, predictor: Predictor, ckpt_path: str | Path, calibration: list[str]) -> None:
    """Quantise ``done``'s ONNX artifact to int8 beside it and measure it against float32 on the test posters."""
    artifact = done.artifact.with_name(done.artifact.stem + ".int8.onnx")
    quantize_int8(done.artifact, artifact, image_batches(calibration, predictor.eval_transform))
    done.int8 = int8_against_float(done.artifact, artifact, predictor, ckpt_path)
    done.int8["calibration_images"] = len(calibration)
    result = {**done.sidecar, "artifact": artifact.name, "precision": "int8", "int8": done.int8}
    result["input"] = {**result["input"], "note": "float32 in; the graph quantises it (QDQ)"}
    done.int8_artifact, done.int8_sidecar_path = artifact, artifact.with_name(artifact.name + ".json")
    done.int8_sidecar_path.write_text(json.dumps(result, indent=2))


def int8_against_float(float_model: Path, int8_model: Path, predictor: Predictor, ckpt_path: str | Path) -> dict:
    """``quantize.compare`` of the two models on the test posters of the checkpoint's split."""
    paths, labels = split_posters(ckpt_path, predictor.classes, "test", "int8 is measured on its test posters")
    label_of = dict(zip(paths, labels, strict=True))
    sessions = onnx_session(float_model), onnx_session(int8_model)
    logits: tuple[list, list] = ([], [])
    readable: list[str] = []
    for batch in decoded_batches(paths, predictor.eval_transform, batch_size=32, workers=0):
        if not batch.index.numel():
            continue
        readable += [label_of[batch.paths[i]] for i in batch.index.tolist()]
        for session, out in zip(sessions, logits, strict=True):
            out.append(run_session(session, batch.images))
    return compare(np.concatenate(logits[0]), np.concatenate(logits[1]), readable, predictor.classes)


def sidecar(predictor: Predictor, fmt: str, artifact: Path, ckpt_path: str | Path, parity: dict[str, Any]) -> dict:
    """What a server needs to feed the artifact and read its output."""
    config = predictor.data_config
    channels, height, width = config["input_size"]
    thresholds = predictor.task.thresholds()
    return {
        "format": fmt,
        "artifact": artifact.name,
        "classes": list(predictor.classes),
        "input": {"name": INPUT_NAME, "shape": ["batch", channels, height, width], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(predictor.classes)], "note": _output_note(predictor)},
        # single: the top genre. multilabel: every genre whose sigmoid exceeds its threshold (tuned on val).
        "task": "multilabel" if predictor.multilabel else "single",
        "thresholds": thresholds.tolist() if thresholds is not None else None,
        # single: the probabilities are softmax(logits / temperature) (temperature scaling, fitted on val).
        "temperature": _temperature(predictor),
        # Test-time augmentation (the flip, model.tta's scales and crops) happens inside the artifact:
        # send each image once.
        "tta_hflip": predictor.tta_hflip,
        "tta": predictor.tta.to_dict(),
        "preprocessing": {
            "input_size": list(config["input_size"]),
            "interpolation": config.get("interpolation"),
            "mean": list(config["mean"]),
            "std": list(config["std"]),
            "crop_pct": config.get("crop_pct"),
            "crop_mode": config.get("crop_mode"),
            "color": "RGB, values scaled to [0, 1] before mean/std",
            "pipeline": str(predictor.eval_transform),
        },
        "backbone": predictor.identity.get("backbone"),
        "checkpoint": str(Path(ckpt_path).resolve()),
        "checkpoint_sha256": predictor.identity.get("sha256"),
        "parity": parity,
        "torch": torch.__version__,
    }


def _temperature(predictor: Predictor) -> float | None:
    temperature = getattr(predictor.task, "temperature", None)
    return float(temperature) if temperature is not None else None


def _output_note(predictor: Predictor) -> str:
    if predictor.multilabel:
        return "logits; sigmoid -> p per genre; a genre is predicted where p > its entry in thresholds"
    return "logits; softmax(logits / temperature) -> p"
