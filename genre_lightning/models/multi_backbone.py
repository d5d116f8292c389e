"""Several frozen-or-trainable backbones, one head: the concatenation of their pooled features.

``model.backbone=[tf_efficientnet_lite0,mobilenetv2_100]`` builds a ``MultiBackboneNet``: each
backbone is a timm network without its classifier, its pooled features are concatenated, and one
linear head (what the linear probe fits, or what fine-tuning trains) sees them all. Each backbone
keeps its own timm data config (``model.data_config`` overrides apply to every one of them, so the
recipes' 288x192 input is shared): the network takes images prepared for the first backbone and
converts them for each other one (mean/std exactly, a bilinear resize where the pixel settings
differ), as the ensemble does (``ensemble.py``).

The network speaks timm's API (``forward_features``, ``forward_head``, ``get_classifier``,
``feature_info`` of the first backbone, for class-activation maps), so training, the feature
cache, prediction and export take it like any timm backbone; ``forward_parts`` gives the features
of some backbones only (the feature cache keeps one store per backbone).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

from genre_lightning.models.backbone import check_backbone_name, create_backbone, resolve_data_config
from genre_lightning.utils.errors import ConfigError

# How a backbone turns a poster into pixels; mean/std differences are converted exactly, these are not.
PIXEL_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode")
WEIGHTS_FORMS = "one file per model.backbone entry (a list of the same length, null for none), a mapping name -> file"


def backbone_names(backbone: str | Sequence[str]) -> list[str]:
    """``model.backbone`` as a list of names (a string is one backbone), each a timm model."""
    names = [backbone] if isinstance(backbone, str) else list(backbone)
    if not names or not all(isinstance(name, str) for name in names):
        raise ConfigError("model.backbone", backbone, "a timm model name or a non-empty list of them")
    for index, name in enumerate(names):
        try:
            check_backbone_name(name)
        except ConfigError as err:
            key = "model.backbone" if len(names) == 1 else f"model.backbone[{index}]"
            raise ConfigError(key, name, err.valid) from None
    if len(set(names)) != len(names):
        raise ConfigError("model.backbone", names, "a list of different timm model names")
    return names


def weights_per_backbone(names: Sequence[str], weights: Any) -> list[str | None]:
    """``model.weights`` as one file (or None) per backbone: a list as long as the backbones, a
    mapping backbone name -> file, or None (a plain file only for one backbone)."""
    if weights is None:
        return [None] * len(names)
    if isinstance(weights, str):
        if len(names) == 1:
            return [weights]
        raise ConfigError("model.weights", weights, f"{WEIGHTS_FORMS} (there are {len(names)} backbones: {names})")
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ConfigError("model.weights", dict(weights), f"a mapping whose names are among model.backbone {names}")
        return [weights.get(name) for name in names]
    weights = list(weights)
    if len(weights) != len(names):
        raise ConfigError(
            "model.weights",
            weights,
            f"{WEIGHTS_FORMS}: {len(names)} files for model.backbone={names}, not {len(weights)}",
        )
    return weights


def normalise_backbones(backbone: str | Sequence[str], weights: Any) -> tuple[str | list[str], Any]:
    """``(model.backbone, model.weights)`` with a list of one backbone as that backbone and its file
    (the same model, checkpoint and feature-cache stores as naming it alone)."""
    if isinstance(backbone, str) or len(backbone) != 1:
        return backbone if isinstance(backbone, str) else list(backbone), weights
    names = backbone_names(backbone)
    return names[0], weights_per_backbone(names, weights)[0]


def create_part(
    name: str, index: int, names: Sequence[str], num_classes: int, pretrained: bool, weights: Any, **kwargs
):
    """Backbone ``index`` without its classifier. Built with the head first and then reset, so its
    random numbers (a random init) and its weight loading are those of the single-backbone model: its
    features, and its feature-cache store, are that model's."""
    try:
        net = create_backbone(name, num_classes, pretrained, weights, **kwargs)
    except ConfigError as err:
        if err.key != "model.weights":
            raise
        raise ConfigError(
            f"model.weights[{index}]",
            weights,
            f"timm weights for backbone {index}, {name}; the file {what_the_file_holds(weights, names)} ({err.valid})",
        ) from None
    net.reset_classifier(0)
    return net


def what_the_file_holds(path: str, names: Sequence[str]) -> str:
    """A weights file described for an error message: the listed backbone it fits, if any (a list
    out of order), else its size."""
    try:
        state = timm.models.load_state_dict(str(Path(path).expanduser()))
    except Exception:  # noqa: BLE001 - only a description; the error itself is reported anyway
        return "cannot be read as timm weights"
    shapes = {key: tuple(tensor.shape) for key, tensor in state.items() if not key.endswith("num_batches_tracked")}
    for index, name in enumerate(names):
        expected = timm.create_model(name, pretrained=False).state_dict()
        if shapes == {k: tuple(t.shape) for k, t in expected.items() if not k.endswith("num_batches_tracked")}:
            return f"holds the weights of {name}, backbone {index} of model.backbone (the lists in different orders?)"
    parameters = sum(int(torch.tensor(shape).prod()) for shape in shapes.values())
    return f"holds another network ({len(shapes)} tensors, {parameters / 1e6:.2f}M values)"


class InputConversion(nn.Module):
    """Images normalised (and sized) for a reference data config, converted to another config's
    input: ``x * std_ref + mean_ref`` re-normalised with the other mean/std (exact), and a bilinear
    resize when the input sizes differ."""

    def __init__(self, data_config: Mapping[str, Any], reference: Mapping[str, Any]) -> None:
        super().__init__()
        self.size = tuple(data_config["input_size"][1:])
        self.resize = self.size != tuple(reference["input_size"][1:])
        mean, std = torch.tensor(data_config["mean"]), torch.tensor(data_config["std"])
        ref_mean, ref_std = torch.tensor(reference["mean"]), torch.tensor(reference["std"])
        self.identity = bool(torch.equal(mean, ref_mean) and torch.equal(std, ref_std))
        self.register_buffer("scale", (ref_std / std).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((ref_mean - mean) / std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.resize:
            images = nn.functional.interpolate(images, size=self.size, mode="bilinear", align_corners=False)
        return images if self.identity else images * self.scale + self.shift


class MultiBackboneNet(nn.Module):
    """Backbones whose pooled features are concatenated, and one linear head on them."""

    def __init__(
        self,
        backbone: Sequence[str],
        num_classes: int,
        pretrained: bool = False,
        weights: Any = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        data_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.names = backbone_names(backbone)
        files = weights_per_backbone(self.names, weights)
        extra = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
        self.backbones = nn.ModuleList(
            create_part(name, i, self.names, num_classes, pretrained, file, **extra)
            for i, (name, file) in enumerate(zip(self.names, files, strict=True))
        )
        configs = [resolve_data_config(net, data_config) for net in self.backbones]
        self.data_config = configs[0]
        self.conversions = nn.ModuleList(InputConversion(config, configs[0]) for config in configs)
        # What each backbone's input really is: its own config, or, where its pixel settings differ from
        # the first backbone's, a resize of that one's (so its features are not a single model's).
        self.part_data_configs = [
            config if all(config[k] == configs[0][k] for k in PIXEL_KEYS) else {**config, "resized_from": configs[0]}
            for config in configs
        ]
        self.num_features = sum(net.num_features for net in self.backbones)
        self.drop_rate = drop_rate
        self.head = nn.Linear(self.num_features, num_classes)
        # Class-activation maps explain the first backbone's last stage (inference/explain.py).
        self.feature_info = [
            {**stage, "module": f"backbones.0.{stage['module']}"} for stage in self.backbones[0].feature_info
        ]

    def forward_parts(self, images: torch.Tensor, parts: Sequence[int]) -> torch.Tensor:
        """The pooled features of the backbones ``parts`` (indices), concatenated in that order."""
        pooled = []
        for index in parts:
            net = self.backbones[index]
            pooled.append(net.forward_head(net.forward_features(self.conversions[index](images)), pre_logits=True))
        return torch.cat(pooled, dim=1)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Every backbone's pooled features, concatenated (already pooled: ``forward_head`` only classifies)."""
        return self.forward_parts(images, range(len(self.backbones)))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        features = nn.functional.dropout(features, self.drop_rate, self.training) if self.drop_rate else features
        return features if pre_logits else self.head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def get_classifier(self) -> nn.Module:
        return self.head
