"""GenreClassifier on its own: what the callbacks change goes through its declared methods."""

from __future__ import annotations

import torch
import torch.nn as nn

from genre_lightning.training.module import GenreClassifier

CLASSES = ["Action", "Comedy", "Horror", "Romance"]


def tiny() -> GenreClassifier:
    torch.manual_seed(0)
    return GenreClassifier("resnet10t", CLASSES, data_config={"input_size": (3, 32, 32)})


def batchnorm_modes(model: GenreClassifier) -> set[bool]:
    return {m.training for m in model.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def test_the_batchnorm_policy_decides_whether_trainable_layers_update_their_statistics():
    model = tiny().train()
    model.on_train_batch_start(None, 0)
    assert batchnorm_modes(model) == {True}  # everything trains, statistics update
    model.set_batchnorm_policy(keep_statistics=True)
    model.on_train_batch_start(None, 0)
    assert batchnorm_modes(model) == {False}
    model.set_batchnorm_policy(keep_statistics=False)
    for p in model.net.parameters():  # frozen layers keep theirs whatever the policy says
        p.requires_grad = False
    model.on_train_batch_start(None, 0)
    assert batchnorm_modes(model) == {False}


def test_flip_tta_and_channels_last_are_switched_by_methods_and_recorded():
    model = tiny().eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(images)
        model.set_flip_tta(True)
        averaged = model(images)
        expected = (model.net(images) + model.net(images.flip(-1))) / 2
    assert model.hparams.tta_hflip is True
    torch.testing.assert_close(averaged, expected)
    assert not torch.allclose(plain, averaged)
    model.set_channels_last(True)
    assert model.hparams.channels_last is True
    assert model.net.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
