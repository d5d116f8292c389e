"""The LightningModule's test-time augmentation settings, as a mixin: which views evaluation and
prediction average (``models/tta.py``), recorded in the hyper-parameters (``tta_hflip``, ``tta``) so
a saved checkpoint, an export and the model card say so too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn as nn

from genre_lightning.models.tta import TTA, resolve_tta, with_tta
from genre_lightning.utils.plain_values import to_plain


class TTASettings:
    """Needs ``self.hparams`` (with ``tta_hflip``, and ``tta`` from checkpoints that have it) and ``self.net``."""

    def set_flip_tta(self, enabled: bool) -> None:
        """Average each image's logits with its mirror image's at evaluation and prediction (recorded
        in the hyper-parameters, so an export or a saved checkpoint says so too)."""
        self.hparams.tta_hflip = bool(enabled)
        if self.hparams.get("tta"):
            self.hparams.tta = {**self.hparams.tta, "hflip": bool(enabled)}

    def set_tta(self, tta: Mapping[str, Any] | None, key: str = "tta") -> None:
        """Evaluate and predict with these test-time views (``models/tta.py``), recorded as set_flip_tta."""
        spec = resolve_tta(to_plain(tta), self.hparams.tta_hflip, key)
        self.hparams.tta, self.hparams.tta_hflip = spec.to_dict(), spec.hflip

    def test_time_augmentation(self, stage: str = "test") -> TTA:
        """The views evaluation and prediction average (none in training)."""
        return TTA() if stage == "train" else resolve_tta(self.hparams.get("tta"), self.hparams.tta_hflip)

    def inference_net(self) -> nn.Module:
        """The plain network that evaluation and prediction run: with TTA, the average of the logits
        of each image's views (its mirror image, ``model.tta``'s scales and crops)."""
        return with_tta(self.net, self.test_time_augmentation())

    def flip_averaged(self, stage: str) -> bool:
        """Whether this stage averages each image with its mirror image (test-time augmentation)."""
        return self.test_time_augmentation(stage).hflip
