"""Prediction from Python (a notebook, a service): images in, genre probabilities out.

``GenreClassifier.predict`` calls :func:`predict_images`. Files and PIL images go through the
checkpoint's own evaluation transform, decoded exactly as in training (EXIF orientation,
transparency flattened on white, 16-bit and CMYK converted); a ``uint8`` tensor is taken as
raw RGB pixels and goes through the same transform; a floating-point tensor is taken as a
batch that is already preprocessed (what ``model.eval_transform`` returns).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from genre_lightning.data.imageio import to_rgb
from genre_lightning.errors import ConfigError

if TYPE_CHECKING:
    from genre_lightning.model import GenreClassifier

ImageInput = str | Path | Image.Image | torch.Tensor


@dataclass(frozen=True)
class GenrePrediction:
    """One image's result: every genre's probability (in the model's class order), the top k, and
    ``genres``: the predicted genres (multi-label: every genre above its decision threshold, in class
    order, possibly none; single-label: the top genre).

    ``error`` is set, and the probabilities are empty, for a file that could not be decoded.
    """

    source: str
    probabilities: dict[str, float] = field(default_factory=dict)
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    genres: list[str] = field(default_factory=list)

    @property
    def genre(self) -> str | None:
        """The most probable genre (None for an unreadable file)."""
        return self.top_k[0][0] if self.top_k else None


def _as_items(images: ImageInput | Sequence[ImageInput]) -> list[str | Path | Image.Image | torch.Tensor]:
    """One input or many, as a list; a 4-D tensor is a batch of images."""
    if isinstance(images, str | Path | Image.Image):
        return [images]
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            return [images]
        if images.ndim == 4:
            return list(images)
        raise ConfigError(
            "images", f"tensor of shape {tuple(images.shape)}", "a (3, H, W) image or an (N, 3, H, W) batch"
        )
    return list(images)


def _prediction(
    source: str, probabilities: torch.Tensor, classes: Sequence[str], top_k: int, thresholds: torch.Tensor | None
) -> GenrePrediction:
    values = [float(p) for p in probabilities.tolist()]
    ranked = sorted(zip(classes, values, strict=True), key=lambda pair: -pair[1])[: max(1, top_k)]
    if thresholds is None:
        genres = [ranked[0][0]]
    else:
        genres = [c for c, p, t in zip(classes, values, thresholds.tolist(), strict=True) if p > t]
    return GenrePrediction(source, dict(zip(classes, values, strict=True)), ranked, genres=genres)


@torch.inference_mode()
def predict_images(
    model: GenreClassifier, images: ImageInput | Sequence[ImageInput], top_k: int = 3, batch_size: int = 32
) -> list[GenrePrediction]:
    """Genre probabilities for each image, in input order (see the module docstring for the inputs)."""
    from genre_lightning.predict import predict_files  # the CLI's batched, prefetching file loop

    items = _as_items(images)
    model.eval()
    thresholds = model.decision_thresholds().cpu() if model.multilabel else None
    results: list[GenrePrediction | None] = [None] * len(items)
    paths = [(i, str(item)) for i, item in enumerate(items) if isinstance(item, str | Path)]
    if paths:
        frame = predict_files(
            model, [p for _, p in paths], batch_size, device=model.device, progress=False, channels_last=False
        )
        for (i, path), row in zip(paths, frame.itertuples(index=False), strict=True):
            if row.error:
                results[i] = GenrePrediction(path, error=row.error)
            else:
                row_probabilities = torch.tensor([getattr(row, f"p_{c}") for c in model.classes])
                results[i] = _prediction(path, row_probabilities, model.classes, top_k, thresholds)
    others = [(i, item) for i, item in enumerate(items) if not isinstance(item, str | Path)]
    transform = model.eval_transform
    for start in range(0, len(others), batch_size):
        chunk = others[start : start + batch_size]
        batch = torch.stack([_model_input(item, transform) for _, item in chunk]).to(model.device)
        probabilities = model.probabilities(model(batch).float()).cpu()
        for (i, item), row in zip(chunk, probabilities, strict=True):
            source = f"<{type(item).__name__} {i}>"
            results[i] = _prediction(source, row, model.classes, top_k, thresholds)
    return [r for r in results if r is not None]


def _model_input(item: Image.Image | torch.Tensor, transform) -> torch.Tensor:
    if isinstance(item, Image.Image):
        return transform(to_rgb(item))
    if not isinstance(item, torch.Tensor) or item.ndim != 3 or item.shape[0] != 3:
        shape = tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
        raise ConfigError("images", shape, "file paths, PIL images, or (3, H, W) / (N, 3, H, W) tensors")
    if item.dtype == torch.uint8:  # raw pixels: through the checkpoint's eval transform
        return transform(Image.fromarray(item.permute(1, 2, 0).cpu().numpy()))
    if not item.is_floating_point() or not math.isfinite(float(item.abs().max())):
        raise ConfigError(
            "images", f"tensor of dtype {item.dtype}", "uint8 pixels or a finite preprocessed float batch"
        )
    return item.float()
