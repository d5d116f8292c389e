"""The network of a genre model, built from its hyper-parameters: a timm backbone with a new head,
several backbones' concatenated features with one head, or an ensemble of member networks. The
LightningModule trains it; the predictor runs it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn as nn

from genre_lightning.models.backbone import create_backbone, resolve_data_config
from genre_lightning.models.ensemble import EnsembleNet
from genre_lightning.models.multi_backbone import MultiBackboneNet, normalise_backbones


def build_network(
    backbone: str | Sequence[str],
    num_classes: int,
    pretrained: bool = False,
    weights: str | Sequence[str | None] | Mapping[str, str] | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    data_config: Mapping[str, Any] | None = None,
    members: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The network and its resolved timm data config (input size, interpolation, mean, std, crop)."""
    if members:  # genre-ensemble: the members' networks, their probabilities averaged
        net = EnsembleNet(members, num_classes)
        return net, net.data_config
    backbone, weights = normalise_backbones(backbone, weights)  # a list of one is that backbone
    if not isinstance(backbone, str):  # model.backbone=[a,b,...]: their features concatenated, one head
        net = MultiBackboneNet(backbone, num_classes, pretrained, weights, drop_rate, drop_path_rate, data_config)
        return net, net.data_config
    extra = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
    net = create_backbone(backbone, num_classes, pretrained, weights, drop_rate=drop_rate, **extra)
    return net, resolve_data_config(net, data_config)
