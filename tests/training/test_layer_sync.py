"""trainer=ddp's synchronised BatchNorm must not change what a timm network computes."""

from __future__ import annotations

import pytest
import timm
import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins import TorchSyncBatchNorm
from timm.layers.norm_act import BatchNormAct2d, SyncBatchNormAct

from genre_lightning.cli.common import compose_config
from genre_lightning.training.layer_sync import TimmSyncBatchNorm


def _network() -> torch.nn.Module:
    torch.manual_seed(0)
    net = timm.create_model("efficientnet_b0", pretrained=False, num_classes=4).eval()
    for module in net.modules():  # non-trivial running statistics, so a lost layer shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return net


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_lightning_default_sync_batchnorm_drops_timm_activations(images):
    """Why the plugin exists: torch's converter turns BatchNormAct2d into a bare SyncBatchNorm."""
    net = _network()
    with torch.no_grad():
        expected = net(images)
        converted = TorchSyncBatchNorm().apply(net)
        assert (converted(images) - expected).abs().max() > 1e-2


def test_timm_sync_batchnorm_keeps_the_network_and_reverts_exactly(images):
    net = _network()
    n_fused = sum(isinstance(m, BatchNormAct2d) for m in net.modules())
    plugin = TimmSyncBatchNorm()
    with torch.no_grad():
        expected = net(images)
        synced = plugin.apply(net)
        assert sum(isinstance(m, SyncBatchNormAct) for m in synced.modules()) == n_fused > 0
        torch.testing.assert_close(synced(images), expected, rtol=0, atol=0)
        reverted = plugin.revert(synced)
        assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in reverted.modules())
        assert sum(type(m) is BatchNormAct2d for m in reverted.modules()) == n_fused
        torch.testing.assert_close(reverted(images), expected, rtol=0, atol=0)


def test_trainer_ddp_uses_the_timm_plugin(tmp_path):
    # trainer=ddp as composed, on 2 CPU processes instead of GPUs (the trainer is built, not run).
    overrides = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
    trainer = instantiate(compose_config("train", overrides, tmp_path).trainer)
    assert isinstance(trainer.strategy._layer_sync, TimmSyncBatchNorm)
