"""A network's pooled features as a module of its own: what the frozen-feature cache stores."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PooledFeatures(nn.Module):
    """A timm network's pooled features (``forward_head(..., pre_logits=True)``): what its classifier
    sees; of a ``MultiBackboneNet``, those of the backbones ``parts`` only, when given."""

    def __init__(self, net: nn.Module, parts: Sequence[int] | None = None) -> None:
        super().__init__()
        self.net = net
        self.parts = parts

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.parts is not None:
            return self.net.forward_parts(images, self.parts)
        return self.net.forward_head(self.net.forward_features(images), pre_logits=True)
