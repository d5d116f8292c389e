"""Class-activation maps: which part of a poster made the model say a genre.

Built on pytorch-grad-cam (``grad-cam`` 1.5.x, the package mmpretrain's ``vis_cam`` wraps; imported
here only, so ``import genre_lightning.inference`` stays light). Methods: ``gradcam`` and
``gradcam++`` (gradients of the genre's logit at the target layer) and ``scorecam`` (gradient-free:
each channel of the target layer, as a mask on the image, weighted by the genre's score it gives).

* The target layer comes from the backbone: the last stage of timm's ``feature_info`` (for a CNN its
  last convolutional stage); a ViT-style model that pools its class token uses the last block's
  ``norm1`` (the class token alone leaves the last block, so its patch tokens get no gradient there).
  Token maps ``(N, tokens, C)`` and channels-last maps ``(N, H, W, C)`` are reshaped to ``(N, C, H, W)``.
* Flip test-time augmentation is explained as it predicts: the map of the image and the mirrored map
  of its mirror image, averaged. An ensemble's map is the mean of its members' maps (each member with
  its own preprocessing and flip setting), all for the genre the ensemble explains.
* Maps are ``(H, W)`` arrays in [0, 1] at the network's input size: they cover the picture the network
  saw (``Explanation.image``, the evaluation transform's output, de-normalised).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from genre_lightning.data.imageio import UnreadableImage, read_rgb, unexpected_error_reason
from genre_lightning.models.ensemble import EnsembleNet
from genre_lightning.models.flip import FlipAveraged
from genre_lightning.models.tta import TTAAveraged
from genre_lightning.utils.errors import ConfigError, UserFacingError


class Predictor(Protocol):
    """What an explanation needs of a model (``inference.predictor.Predictor`` has it; not imported
    here, since ``Predictor.explain`` imports this module)."""

    classes: list[str]
    network: nn.Module
    device: torch.device
    data_config: dict[str, Any]
    min_image_side: int | None

    def model_input(self, image: Any) -> torch.Tensor: ...

    def predict(self, images: Any, top_k: int = 3, batch_size: int = 32) -> list[Any]: ...


METHODS = ("gradcam", "gradcam++", "scorecam")
OVERLAY_SIDE = 256  # the shorter side, in pixels, of an overlay: a 32-224 px network input scaled up to be seen
SCORECAM_BATCH = 32  # masked images per forward pass of Score-CAM


@dataclass(frozen=True)
class Explanation:
    """One image's maps: ``maps[genre]`` is an ``(H, W)`` array in [0, 1] at the network's input size,
    ``image`` the ``(H, W, 3)`` picture the network saw (in [0, 1]), ``prediction`` the model's answer.
    ``error`` is set (and ``maps`` empty) for a file that could not be decoded."""

    source: str
    prediction: Any  # the model's GenrePrediction (None for an unreadable file)
    image: np.ndarray | None = None
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    method: str = "gradcam"
    error: str | None = None

    @property
    def genre(self) -> str | None:
        """The most probable genre (None for an unreadable file)."""
        return self.prediction.genre if self.prediction else None

    def overlay(self, genre: str | None = None, side: int = OVERLAY_SIDE) -> Image.Image:
        """The map of ``genre`` (default: the top genre) over the picture, scaled to a shorter side of ``side``."""
        genre = genre or self.genre
        if self.image is None or genre not in self.maps:
            raise KeyError(f"no map of {genre!r} for {self.source} (maps: {sorted(self.maps)})")
        return overlay(self.image, self.maps[genre], side)


def explain(
    predictor: Predictor,
    images: Any,
    genres: str | Sequence[str] = "top",
    method: str = "gradcam",
    top_k: int = 3,
) -> list[Explanation]:
    """The maps of ``genres`` (``"top"``: each image's top genre; ``"all"``: every genre; or a list of
    genre names) for each image, in input order. ``images`` takes what ``Predictor.predict`` takes."""
    cam_class = _cam_class(method)
    wanted = _genre_choice(genres, predictor.classes)
    results: list[Explanation] = []
    for source, item in _sources(images):
        # A file that cannot be decoded, or a picture the intake would refuse, gets an error, as in predict.
        try:
            if isinstance(item, str | Path):
                item = read_rgb(item, predictor.min_image_side)
            tensor = predictor.model_input(item)
        except UnreadableImage as err:
            results.append(Explanation(source, None, method=method, error=str(err)))
            continue
        except Exception as err:  # a decoder bug: this file fails, the others go on
            if not isinstance(item, str | Path):
                raise  # not the file's decoding: said as it is
            results.append(Explanation(source, None, method=method, error=unexpected_error_reason(err)))
            continue
        (prediction,) = predictor.predict(tensor[None], top_k=top_k)
        names = [prediction.genre] if wanted is None else wanted
        maps = class_maps(predictor, tensor, [predictor.classes.index(n) for n in names], cam_class)
        picture = denormalise(tensor, predictor.data_config["mean"], predictor.data_config["std"])
        results.append(
            Explanation(source, _named(prediction, source), picture, dict(zip(names, maps, strict=True)), method)
        )
    return results


def class_maps(predictor: Predictor, image: torch.Tensor, targets: Sequence[int], cam_class: type) -> list[np.ndarray]:
    """One ``(H, W)`` map in [0, 1] per target class, for one preprocessed image ``(3, H, W)``."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    wanted = [ClassifierOutputTarget(t) for t in targets]
    total = np.zeros((len(targets), *image.shape[1:]), dtype=np.float32)
    branches = network_branches(predictor)
    # Out of inference mode (Lightning's test hooks run in it): the maps need a backward pass.
    with torch.inference_mode(False), torch.enable_grad():
        batch = image.detach().clone()[None].to(predictor.device).float().repeat(len(targets), 1, 1, 1)
        for net, flip in branches:
            views = [(batch, False), (batch.flip(-1), True)] if flip else [(batch, False)]
            for view, mirrored in views:
                # A leaf that needs its gradient: the layer's activations then carry one even where every
                # parameter before it is frozen (a fine-tuning phase, a linear probe).
                view = view.detach().clone().requires_grad_(True)
                timm_net = _timm_net(net)
                layers = [target_layer(timm_net)]
                with cam_class(model=net, target_layers=layers, reshape_transform=reshape_transform(timm_net)) as cam:
                    if hasattr(cam, "batch_size"):
                        cam.batch_size = SCORECAM_BATCH
                    maps = cam(input_tensor=view, targets=wanted)
                total += maps[..., ::-1] if mirrored else maps
                net.zero_grad(set_to_none=True)  # grad-cam's backward leaves gradients on the parameters
    total /= sum(2 if flip else 1 for _, flip in branches)
    return [_unit_range(m) for m in total]


def network_branches(predictor: Predictor) -> list[tuple[nn.Module, bool]]:
    """The networks whose maps are averaged, each with its flip setting: the model's network, or an
    ensemble's members (each taking the ensemble's input through its own preprocessing)."""
    network, flip = predictor.network, False
    if isinstance(network, FlipAveraged | TTAAveraged):  # (model.tta's scales and crops: mapped at scale 1)
        network, flip = network.net, predictor.tta.hflip
    if isinstance(network, EnsembleNet):
        return [(PreparedMember(member), member.flip) for member in network.members]
    return [(network, flip)]


class PreparedMember(nn.Module):
    """An ensemble member without its flip averaging: the member's preprocessing, then its network."""

    def __init__(self, member: nn.Module) -> None:
        super().__init__()
        self.member = member

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.member.net(self.member.prepare(images))


def _timm_net(net: nn.Module) -> nn.Module:
    return net.member.net if isinstance(net, PreparedMember) else net


def target_layer(net: nn.Module) -> nn.Module:
    """The layer whose activations a map is made of: the last ``feature_info`` stage, or a ViT-style
    model's last ``blocks[-1].norm1`` when it pools the class token."""
    blocks = getattr(net, "blocks", None)
    if getattr(net, "global_pool", None) == "token" and blocks is not None and hasattr(blocks[-1], "norm1"):
        return blocks[-1].norm1
    info = getattr(net, "feature_info", None)
    if not info:
        raise UserFacingError(
            f"cannot explain {type(net).__name__}: it has no timm feature_info to find its last stage in"
        )
    return net.get_submodule(info[-1]["module"])


def reshape_transform(net: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Activations as ``(N, C, H, W)``: ViT-style tokens (prefix tokens dropped) laid out on the patch
    grid, and channels-last stage outputs (Swin-style ``(N, H, W, C)``) permuted."""
    prefix = int(getattr(net, "num_prefix_tokens", 0) or 0)
    grid = tuple(getattr(getattr(net, "patch_embed", None), "grid_size", ()) or ())
    channels = {stage["num_chs"] for stage in getattr(net, "feature_info", None) or []}

    def transform(activations: torch.Tensor) -> torch.Tensor:
        if activations.ndim == 3:  # (N, tokens, C)
            tokens = activations[:, prefix:]
            n, count, c = tokens.shape
            h, w = (
                grid
                if len(grid) == 2 and grid[0] * grid[1] == count
                else (math.isqrt(count), count // math.isqrt(count))
            )
            return tokens.reshape(n, h, w, c).permute(0, 3, 1, 2)
        if activations.ndim == 4 and activations.shape[-1] in channels and activations.shape[1] not in channels:
            return activations.permute(0, 3, 1, 2)
        return activations

    return transform


def denormalise(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised ``(3, H, W)`` network input as the ``(H, W, 3)`` picture it was, in [0, 1]."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (image.detach().float().cpu() * std_t + mean_t).clamp(0, 1).permute(1, 2, 0).numpy()


def overlay(picture: np.ndarray, heatmap: np.ndarray, side: int = OVERLAY_SIDE) -> Image.Image:
    """``heatmap`` (``(H, W)`` in [0, 1]) in the jet colour map, half over ``picture``, scaled so that the
    shorter side is ``side`` pixels."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    blended = Image.fromarray(show_cam_on_image(picture.astype(np.float32), heatmap, use_rgb=True, image_weight=0.5))
    scale = side / min(blended.size)
    return blended.resize((round(blended.width * scale), round(blended.height * scale)), Image.Resampling.BICUBIC)


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    """Where a map is largest: ``(row, column)``."""
    row, column = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(row), int(column)


def _cam_class(method: str) -> type:
    if method not in METHODS:
        raise ConfigError("explain_method", method, f"one of {list(METHODS)}")
    if importlib.util.find_spec("pytorch_grad_cam") is None:
        raise UserFacingError("explanations need grad-cam: pip install 'genre-lightning[explain]'")
    import pytorch_grad_cam

    return {
        "gradcam": pytorch_grad_cam.GradCAM,
        "gradcam++": pytorch_grad_cam.GradCAMPlusPlus,
        "scorecam": pytorch_grad_cam.ScoreCAM,
    }[method]


def _genre_choice(genres: str | Sequence[str], classes: Sequence[str]) -> list[str] | None:
    """None for "top" (each image's own top genre); the genre names otherwise."""
    if genres == "top":
        return None
    if genres == "all":
        return list(classes)
    names = [genres] if isinstance(genres, str) else list(genres)
    unknown = [name for name in names if name not in classes]
    if unknown or not names:
        raise ConfigError("genres", genres, f"'top', 'all' or genre names from {list(classes)}")
    return names


def _sources(images: Any) -> list[tuple[str, Any]]:
    """Each input with the name its explanation carries (a path, or ``<Image 0>``)."""
    if isinstance(images, str | Path | Image.Image) or (isinstance(images, torch.Tensor) and images.ndim == 3):
        images = [images]
    return [
        (str(item) if isinstance(item, str | Path) else f"<{type(item).__name__} {i}>", item)
        for i, item in enumerate(images)
    ]


def _named(prediction: Any, source: str) -> Any:
    return replace(prediction, source=source)


def _unit_range(heatmap: np.ndarray) -> np.ndarray:
    low, high = float(heatmap.min()), float(heatmap.max())
    return ((heatmap - low) / (high - low) if high > low else np.zeros_like(heatmap)).astype(np.float32)
