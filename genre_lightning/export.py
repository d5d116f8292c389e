"""genre-export: a checkpoint as an ONNX or TorchScript file a server can load without this project.

Beside the artifact goes ``<artifact>.json``: the class names in output order and the
preprocessing (input size, interpolation, mean, std, crop, and the exact torchvision pipeline).
The export is checked on a batch of real posters: the largest absolute logit difference
against the Lightning model is printed and must stay below ``tolerance``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from genre_lightning.data.annotations import read_split_file
from genre_lightning.data.dataset import PosterDataset, build_transforms, collate_posters
from genre_lightning.errors import ConfigError, UserFacingError, exit_on_user_error
from genre_lightning.evaluate import split_file_for
from genre_lightning.model import GenreClassifier
from genre_lightning.predict import list_inputs
from genre_lightning.runtime import CONFIG_PATH, show_and_save_config

log = logging.getLogger(__name__)

SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
INPUT_NAME, OUTPUT_NAME = "image", "logits"


def parity_batch(model: GenreClassifier, ckpt_path: str, parity_input: str | None, count: int) -> torch.Tensor:
    """Up to ``count`` real images through the model's eval transform: from ``parity_input``, or
    else from the test split of the run the checkpoint belongs to."""
    if parity_input:
        paths = list_inputs(parity_input)
    else:
        try:
            split = read_split_file(split_file_for(ckpt_path, None), model.classes)
        except ConfigError:
            raise ConfigError(
                "parity_input", None, "a file or folder of images (there is no annotations.csv beside the checkpoint)"
            ) from None
        paths = list(split.loc[split["split"] == "test", "file_path"]) or list(split["file_path"])
    _, eval_transform = build_transforms(model.data_config, None)
    candidates = paths[: count * 2]  # spares in case some files cannot be read
    dataset = PosterDataset(candidates, [0] * len(candidates), eval_transform)
    batch = collate_posters([dataset[i] for i in range(len(dataset))])
    if not batch["index"].numel():
        raise ConfigError("parity_input", parity_input, "a file or folder with at least one readable image")
    return batch["image"][:count]


def export_onnx(model: GenreClassifier, path: Path, example: torch.Tensor) -> None:
    if importlib.util.find_spec("onnxscript") is None or importlib.util.find_spec("onnx") is None:
        raise UserFacingError("format=onnx needs onnx and onnxscript: pip install 'genre-lightning[export]'")
    for name in ("onnxscript", "onnx_ir"):  # their optimiser logs every pass at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    model.to_onnx(
        path,
        example,
        dynamo=True,  # torch.export-based exporter (the default since torch 2.9)
        external_data=False,  # one self-contained file
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
        verbose=False,
    )


def onnx_logits(path: Path, images: torch.Tensor) -> np.ndarray:
    if importlib.util.find_spec("onnxruntime") is None:
        raise UserFacingError("the ONNX parity check needs onnxruntime: pip install 'genre-lightning[export]'")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]


def export_torchscript(model: GenreClassifier, path: Path, example: torch.Tensor) -> None:
    # The network evaluation runs (the timm network, averaged with the mirror image under flip TTA);
    # the LightningModule's forward only adds a memory format. LightningModule.to_torchscript is
    # deprecated and goes away in Lightning 2.8.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; said once below instead
        torch.jit.save(torch.jit.trace(model.eval().inference_net(), example), str(path))
    log.warning("TorchScript (torch.jit) is deprecated in PyTorch 2.14; format=onnx is the supported path")


def torchscript_logits(path: Path, images: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return module(images).numpy()


EXPORTERS = {"onnx": (export_onnx, onnx_logits), "torchscript": (export_torchscript, torchscript_logits)}


def sidecar(model: GenreClassifier, fmt: str, artifact: Path, ckpt_path: str, parity: dict[str, Any]) -> dict:
    """What a server needs to feed the artifact and read its output."""
    config = model.data_config
    _, eval_transform = build_transforms(config, None)
    channels, height, width = config["input_size"]
    return {
        "format": fmt,
        "artifact": artifact.name,
        "classes": list(model.classes),
        "input": {"name": INPUT_NAME, "shape": ["batch", channels, height, width], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(model.classes)], "note": _output_note(model)},
        # single: the top genre. multilabel: every genre whose sigmoid exceeds its threshold (tuned on val).
        "task": "multilabel" if model.multilabel else "single",
        "thresholds": model.decision_thresholds().tolist() if model.multilabel else None,
        # Flip test-time augmentation happens inside the artifact: send each image once.
        "tta_hflip": bool(model.hparams.tta_hflip),
        "preprocessing": {
            "input_size": list(config["input_size"]),
            "interpolation": config.get("interpolation"),
            "mean": list(config["mean"]),
            "std": list(config["std"]),
            "crop_pct": config.get("crop_pct"),
            "crop_mode": config.get("crop_mode"),
            "color": "RGB, values scaled to [0, 1] before mean/std",
            "pipeline": str(eval_transform),
        },
        "backbone": model.hparams.backbone,
        "checkpoint": str(Path(ckpt_path).resolve()),
        "parity": parity,
        "torch": torch.__version__,
    }


@exit_on_user_error
def export(cfg: DictConfig) -> dict:
    """Write the artifact and its sidecar, check parity; return the sidecar."""
    if cfg.format not in EXPORTERS:
        raise ConfigError("format", cfg.format, f"one of {sorted(EXPORTERS)}")
    show_and_save_config(cfg, cfg.paths.output_dir, show=cfg.get("print_config", False))
    model = GenreClassifier.from_checkpoint(cfg.ckpt_path).cpu()
    images = parity_batch(model, cfg.ckpt_path, cfg.get("parity_input"), cfg.parity_images)
    output = Path(cfg.output or Path(cfg.paths.output_dir) / f"model{SUFFIXES[cfg.format]}")
    output.parent.mkdir(parents=True, exist_ok=True)
    save, run = EXPORTERS[cfg.format]
    save(model, output, images)

    with torch.inference_mode():
        reference = model(images).numpy()
    # The whole batch, and one image alone: the batch axis is dynamic and a server often sends one.
    difference = max(
        float(np.abs(run(output, images) - reference).max()),
        float(np.abs(run(output, images[:1]) - reference[:1]).max()),
    )
    passed = difference < cfg.tolerance
    parity = {"images": len(images), "max_abs_logit_diff": difference, "tolerance": cfg.tolerance, "passed": passed}
    result = sidecar(model, cfg.format, output, cfg.ckpt_path, parity)
    sidecar_path = output.with_name(output.name + ".json")
    sidecar_path.write_text(json.dumps(result, indent=2))
    print(
        f"parity: max |logit difference| = {difference:.3e} on {len(images)} images "
        f"({'ok' if passed else 'FAILED'}: tolerance {cfg.tolerance:g})"
    )
    if not passed:
        raise UserFacingError(
            f"the {cfg.format} export of {cfg.ckpt_path} differs from the model by {difference:.3e} "
            f"(>= tolerance {cfg.tolerance:g}); do not serve {output}"
        )
    print(f"Wrote {output} and {sidecar_path}")
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()


def _output_note(model: GenreClassifier) -> str:
    if model.multilabel:
        return "logits; sigmoid -> p per genre; a genre is predicted where p > its entry in thresholds"
    return "logits; softmax -> p"
