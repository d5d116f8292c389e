"""Test-time augmentation beyond the flip: the logits (or pooled features) of several views of each
image, averaged. ``model.tta`` names the views; ``model.tta_hflip`` alone is the flip of ``flip.py``.

A view is made from the preprocessed batch, inside the network (so the exported graph holds it too):
the whole image resized by each of ``scales``, and, with ``crops``, crops of the input's size from
the image enlarged by ``crop_zoom`` (torchvision's ``center_crop`` or ``five_crop``: four corners and
the centre); with ``hflip``, every view's mirror image as well. Backbones pool globally, so a view of
another size needs no change to the network."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn as nn

from genre_lightning.models.flip import FlipAveraged
from genre_lightning.utils.errors import ConfigError

CROPS = ("none", "center", "five")
KEYS = ("hflip", "scales", "crops", "crop_zoom")
SCALE_RANGE = (0.5, 2.0)


@dataclass(frozen=True)
class TTA:
    """Which views of an image are averaged; the default is the image alone."""

    hflip: bool = False
    scales: tuple[float, ...] = (1.0,)
    crops: str = "none"
    crop_zoom: float = 1.15

    @property
    def views(self) -> int:
        """Forward passes per image."""
        crops = {"none": 0, "center": 1, "five": 5}[self.crops]
        return (len(self.scales) + crops) * (2 if self.hflip else 1)

    @property
    def identity(self) -> bool:
        """The image alone: no averaging at all."""
        return self.flip_only and not self.hflip

    @property
    def flip_only(self) -> bool:
        """Nothing but the image and (with ``hflip``) its mirror: what ``model.tta_hflip`` alone does."""
        return self.scales == (1.0,) and self.crops == "none"

    def to_dict(self) -> dict[str, Any]:
        """Plain values (checkpoint hyper-parameters, cache keys, sidecars)."""
        return {**asdict(self), "scales": list(self.scales)}

    def describe(self) -> str:
        """One phrase for logs and the model card."""
        if self.flip_only:
            return "flip (the image and its mirror)" if self.hflip else "none"
        parts = [f"scales {list(self.scales)}"]
        if self.crops != "none":
            parts.append(f"{self.crops} crop{'s' if self.crops == 'five' else ''} at zoom {self.crop_zoom}")
        parts.append("each with its mirror" if self.hflip else "no mirror")
        return f"{', '.join(parts)}: {self.views} views averaged"


def resolve_tta(tta: Mapping[str, Any] | TTA | None, hflip: bool | None = None, key: str = "model.tta") -> TTA:
    """The views of ``tta`` (a mapping with any of ``hflip``, ``scales``, ``crops``, ``crop_zoom``, or
    None: the image alone); its ``hflip`` defaults to ``hflip`` (``model.tta_hflip``), so old configs
    and checkpoints, which have only that, mean what they meant. A bad value: one-line ConfigError."""
    if isinstance(tta, TTA):
        return tta  # resolved already: its hflip is explicit
    if type(tta).__module__.startswith("omegaconf"):  # (imported here: the predictor loads without it)
        from genre_lightning.utils.plain_values import to_plain

        tta = to_plain(tta)
    tta = dict(tta or {})
    unknown = sorted(set(tta) - set(KEYS))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", tta[unknown[0]], f"only the keys {list(KEYS)}")
    flip = tta.get("hflip")
    flip = bool(hflip) if flip is None else flip
    if not isinstance(flip, bool):
        raise ConfigError(f"{key}.hflip", flip, "true or false")
    scales = tta.get("scales")
    scales = [1.0] if scales is None else scales
    if isinstance(scales, str | bytes) or not hasattr(scales, "__iter__"):
        raise ConfigError(f"{key}.scales", scales, "a list of factors such as [1.0, 1.15]")
    scales = list(scales)
    low, high = SCALE_RANGE
    if not scales or not all(_number(s) and low <= s <= high for s in scales) or len(set(scales)) < len(scales):
        raise ConfigError(f"{key}.scales", scales, f"a non-empty list of distinct numbers in [{low}, {high}]")
    crops = tta.get("crops") or "none"
    if crops not in CROPS:
        raise ConfigError(f"{key}.crops", crops, f"one of {list(CROPS)}")
    zoom = tta.get("crop_zoom", 1.15)
    if not (_number(zoom) and 1.0 < zoom <= high):
        raise ConfigError(f"{key}.crop_zoom", zoom, f"a number in (1.0, {high}]: how much the crops are enlarged")
    return TTA(flip, tuple(float(s) for s in scales), crops, float(zoom))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _resized(images: torch.Tensor, scale: float) -> torch.Tensor:
    import torchvision.transforms.v2.functional as TF  # here: genre-predict starts without torchvision

    if scale == 1.0:
        return images
    height, width = images.shape[-2:]
    size = [max(1, round(int(height) * scale)), max(1, round(int(width) * scale))]
    # No antialiasing: it has no ONNX export, and it does nothing when enlarging.
    return TF.resize(images, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=False)


def tta_views(images: torch.Tensor, tta: TTA) -> list[torch.Tensor]:
    """The views of a preprocessed batch ``(N, C, H, W)``, in a fixed order."""
    views = [_resized(images, scale) for scale in tta.scales]
    if tta.crops != "none":
        import torchvision.transforms.v2.functional as TF

        size = [int(n) for n in images.shape[-2:]]
        zoomed = _resized(images, tta.crop_zoom)
        views += [TF.center_crop(zoomed, size)] if tta.crops == "center" else list(TF.five_crop(zoomed, size))
    if tta.hflip:
        views += [view.flip(-1) for view in views]
    return views


def tta_average(function: nn.Module, images: torch.Tensor, tta: TTA) -> torch.Tensor:
    """The mean of ``function`` over the views of ``images``."""
    outputs = [function(view) for view in tta_views(images, tta)]
    return torch.stack(outputs).mean(0) if len(outputs) > 1 else outputs[0]


class TTAAveraged(nn.Module):
    """A network whose output is averaged over the views of each image."""

    def __init__(self, net: nn.Module, tta: TTA) -> None:
        super().__init__()
        self.net = net
        self.tta = tta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return tta_average(self.net, images, self.tta)


def with_tta(net: nn.Module, tta: TTA) -> nn.Module:
    """``net`` itself (no views), the flip wrapper of ``flip.py`` (flip only: the same network as
    before ``model.tta`` existed), or ``net`` averaged over ``tta``'s views; the wrapper reports
    ``net``'s train/eval mode."""
    if tta.identity:
        return net
    wrapper = FlipAveraged(net) if tta.flip_only else TTAAveraged(net, tta)
    wrapper.training = net.training
    return wrapper


def checkpoint_tta(
    hparams: Mapping[str, Any], tta: Mapping[str, Any] | None = None, tta_hflip: bool | None = None
) -> TTA:
    """The views a checkpoint's model averages (``tta``/``tta_hflip`` of its hyper-parameters; a
    checkpoint from before ``model.tta`` has only the flip), with a command's overrides: ``tta``
    replaces its views (whose ``hflip`` defaults to the checkpoint's), ``tta_hflip`` sets the flip."""
    views = resolve_tta(hparams.get("tta"), bool(hparams.get("tta_hflip")), "model.tta")
    if tta is not None:
        views = resolve_tta(tta, views.hflip, "tta")
    return views if tta_hflip is None else replace(views, hflip=bool(tta_hflip))
