"""Flip test-time augmentation, written once: an image's logits averaged with its mirror image's.

Used by the LightningModule at evaluation, by each ensemble member, by the exported network and by
the predictor, so every path averages the same way."""

from __future__ import annotations

import torch
import torch.nn as nn


def flip_average(function: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``(f(x) + f(mirror(x))) / 2``: the mirror image is the left-right flip of the width axis."""
    return (function(images) + function(images.flip(-1))) / 2


class FlipAveraged(nn.Module):
    """A network whose output is averaged over each image and its mirror image."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return flip_average(self.net, images)


def with_flip_tta(net: nn.Module, enabled: bool) -> nn.Module:
    """``net`` itself, or ``net`` averaged with the mirror image when ``enabled`` (the wrapper reports
    ``net``'s train/eval mode; ``net``'s own modules are left as they are)."""
    if not enabled:
        return net
    wrapper = FlipAveraged(net)
    wrapper.training = net.training
    return wrapper
