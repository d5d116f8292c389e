"""Synchronised BatchNorm for timm backbones under DDP (``trainer=ddp``).

Lightning's ``sync_batchnorm=True`` converts with ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``,
which turns timm's ``BatchNormAct2d`` (BatchNorm and its activation in one module, used by
EfficientNet, MobileNet and most timm CNNs) into a plain ``SyncBatchNorm``: the activation is left
attached but never called, so the network trains without its non-linearities. timm's own converter
keeps them; this plugin uses it, and undoes it exactly when fitting ends.
"""

from __future__ import annotations

import torch
from lightning.pytorch.plugins import TorchSyncBatchNorm
from timm.layers import convert_sync_batchnorm
from timm.layers.norm_act import BatchNormAct2d, SyncBatchNormAct
from torch import nn


class TimmSyncBatchNorm(TorchSyncBatchNorm):
    """Lightning's ``LayerSync`` plugin for ``Trainer(plugins=[...])`` that keeps timm's fused
    norm + activation layers intact (a subclass, so ``sync_batchnorm=True`` may stay set)."""

    def apply(self, model: nn.Module) -> nn.Module:
        return convert_sync_batchnorm(model)

    def revert(self, model: nn.Module) -> nn.Module:
        if not isinstance(model, SyncBatchNormAct):
            return super().revert(model)  # recurses through this method, so nested layers come back here
        restored = BatchNormAct2d(
            model.num_features, model.eps, model.momentum, model.affine, model.track_running_stats
        )
        restored.act, restored.drop = model.act, model.drop
        if model.affine:
            with torch.no_grad():
                restored.weight, restored.bias = model.weight, model.bias
        restored.running_mean, restored.running_var = model.running_mean, model.running_var
        restored.num_batches_tracked = model.num_batches_tracked
        restored.train(model.training)
        return restored
