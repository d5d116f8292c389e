"""An ensemble as one network: several members' genre probabilities averaged.

Members may differ in backbone, input size and normalisation: the ensemble takes images prepared
for its first member and converts them for each other member (mean/std exactly, and a bilinear
resize when the input size differs), and each member applies its own test-time augmentation (the
flip, ``model.tta``'s views) and its own temperature (``training/calibration.py``): the ensemble
averages calibrated probabilities.
``training/ensemble.py`` builds the checkpoint (``genre-ensemble``); the LightningModule runs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from genre_lightning.models.backbone import create_backbone, resolve_data_config
from genre_lightning.models.flip import flip_average
from genre_lightning.models.tta import TTA, resolve_tta, tta_average

ENSEMBLE_BACKBONE = "ensemble"
# What an ensemble keeps of each member's hyper-parameters: enough to rebuild its network.
MEMBER_KEYS = ("backbone", "drop_rate", "tta_hflip", "tta")
# How a member turns a poster into pixels; mean/std differences are converted exactly, these are not.
PIXEL_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode")


class EnsembleMember(nn.Module):
    """One member network with its own preprocessing: converts an image normalised for the ensemble
    (``mean``/``std``, ``size``) to this member's, averages its logits over its test-time views (the
    mirror image; ``model.tta``'s scales and crops), and divides them by the member's
    temperature (its logits then give its calibrated probabilities)."""

    def __init__(
        self,
        net: nn.Module,
        data_config: Mapping[str, Any],
        reference: Mapping[str, Any],
        flip: bool | TTA,
        temperature: float = 1.0,
    ):
        super().__init__()
        self.net = net
        self.tta = flip if isinstance(flip, TTA) else TTA(hflip=bool(flip))
        self.flip = self.tta.hflip
        self.temperature = float(temperature)
        self.size = tuple(data_config["input_size"][1:])
        self.resize = self.size != tuple(reference["input_size"][1:])
        # x_member = (x * std_ref + mean_ref - mean) / std = x * scale + shift, per channel.
        mean, std = torch.tensor(data_config["mean"]), torch.tensor(data_config["std"])
        ref_mean, ref_std = torch.tensor(reference["mean"]), torch.tensor(reference["std"])
        self.register_buffer("scale", (ref_std / std).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((ref_mean - mean) / std).view(1, -1, 1, 1), persistent=False)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Images prepared for the ensemble's first member, converted to this member's input."""
        if self.resize:
            images = nn.functional.interpolate(images, size=self.size, mode="bilinear", align_corners=False)
        return images * self.scale + self.shift

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = self.prepare(images)
        if self.tta.identity:
            logits = self.net(images)
        else:  # (flip alone: the same arithmetic as before model.tta)
            logits = flip_average(self.net, images) if self.tta.flip_only else tta_average(self.net, images, self.tta)
        return logits / self.temperature if self.temperature != 1.0 else logits


class EnsembleNet(nn.Module):
    """The members' averaged probabilities, returned as logits: log of the mean softmax (so softmax
    gives the mean back exactly)."""

    def __init__(self, members: Sequence[Mapping[str, Any]], num_classes: int) -> None:
        super().__init__()
        nets = [create_backbone(m["backbone"], num_classes, drop_rate=m.get("drop_rate", 0.0)) for m in members]
        configs = [resolve_data_config(net, m.get("data_config")) for net, m in zip(nets, members, strict=True)]
        self.data_config = configs[0]
        self.members = nn.ModuleList(
            # Members recorded before temperature scaling existed had none: 1.0.
            EnsembleMember(net, config, configs[0], member_tta(m), m.get("temperature") or 1.0)
            for net, config, m in zip(nets, configs, members, strict=True)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([member(images).softmax(dim=-1) for member in self.members]).mean(dim=0)
        return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()

    def get_classifier(self) -> nn.Module:  # nothing of an ensemble trains: no classifier of its own
        return nn.Identity()


def member_tta(member: Mapping[str, Any]) -> TTA:
    """A member's test-time views (members recorded before ``model.tta`` have only ``tta_hflip``)."""
    return resolve_tta(member.get("tta"), bool(member.get("tta_hflip")), "members.tta")
