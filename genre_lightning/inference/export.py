"""Export a checkpoint as an ONNX or TorchScript file a server can load without this project.

Beside the artifact goes ``<artifact>.json`` (the sidecar): the class names in output order, the
task and its decision thresholds or temperature, and the preprocessing (input size, interpolation, mean, std,
crop, and the exact torchvision pipeline). The export is checked on real posters: the largest
absolute logit difference against the model is measured, as a batch and as one image.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from genre_lightning.data.annotations import read_split_file
from genre_lightning.data.dataset import PosterDataset, collate_posters
from genre_lightning.data.split_choice import evaluation_split
from genre_lightning.inference.batch import list_inputs
from genre_lightning.inference.predictor import Predictor
from genre_lightning.utils.errors import ConfigError, UserFacingError

log = logging.getLogger(__name__)

SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
INPUT_NAME, OUTPUT_NAME = "image", "logits"


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
    dataset = PosterDataset(candidates, [0] * len(candidates), predictor.eval_transform)
    batch = collate_posters([dataset[i] for i in range(len(dataset))])
    if not batch["index"].numel():
        raise ConfigError("parity_input", parity_input, "a file or folder with at least one readable image")
    return batch["image"][:count]


def export_onnx(network: nn.Module, path: Path, example: torch.Tensor) -> None:
    if importlib.util.find_spec("onnxscript") is None or importlib.util.find_spec("onnx") is None:
        raise UserFacingError("format=onnx needs onnx and onnxscript: pip install 'genre-lightning[export]'")
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


def onnx_logits(path: Path, images: torch.Tensor) -> np.ndarray:
    if importlib.util.find_spec("onnxruntime") is None:
        raise UserFacingError("the ONNX parity check needs onnxruntime: pip install 'genre-lightning[export]'")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]


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


def export_checkpoint(
    ckpt_path: str | Path,
    fmt: str,
    output: Path,
    parity_input: str | None = None,
    parity_images: int = 16,
    tolerance: float = 1e-4,
) -> Export:
    """Write ``output`` (the artifact) and its sidecar, and measure the parity on real posters."""
    if fmt not in EXPORTERS:
        raise ConfigError("format", fmt, f"one of {sorted(EXPORTERS)}")
    predictor = Predictor.from_checkpoint(ckpt_path, channels_last=False)
    images = parity_batch(predictor, ckpt_path, parity_input, parity_images)
    output.parent.mkdir(parents=True, exist_ok=True)
    save, run = EXPORTERS[fmt]
    save(predictor.network, output, images)
    reference = predictor.logits(images).numpy()
    # The whole batch, and one image alone: the batch axis is dynamic and a server often sends one.
    difference = max(
        float(np.abs(run(output, images) - reference).max()),
        float(np.abs(run(output, images[:1]) - reference[:1]).max()),
    )
    passed = difference < tolerance
    parity = {"images": len(images), "max_abs_logit_diff": difference, "tolerance": tolerance, "passed": passed}
    result = sidecar(predictor, fmt, output, ckpt_path, parity)
    sidecar_path = output.with_name(output.name + ".json")
    sidecar_path.write_text(json.dumps(result, indent=2))
    return Export(output, sidecar_path, result, difference, passed)


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
        # Flip test-time augmentation happens inside the artifact: send each image once.
        "tta_hflip": predictor.tta_hflip,
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
