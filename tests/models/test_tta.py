"""Test-time views beyond the flip (model.tta): what each view is, that the model, its frozen-feature
path and an ensemble member average exactly those views, that tta_hflip alone is the network it was,
one-line errors for bad values, and cache keys that differ per setting."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from genre_lightning.data.demo import GENRES
from genre_lightning.inference.onnx_cache import entry_folder
from genre_lightning.models.ensemble import EnsembleMember
from genre_lightning.models.flip import FlipAveraged
from genre_lightning.models.tta import TTA, TTAAveraged, checkpoint_tta, resolve_tta, tta_views, with_tta
from genre_lightning.training.module import GenreClassifier
from genre_lightning.utils.errors import ConfigError

RICH = {"hflip": True, "scales": [1.0, 1.2], "crops": "five", "crop_zoom": 1.25}


def test_the_views_are_the_resized_image_the_crops_of_the_enlarged_one_and_their_mirrors():
    images = torch.randn(2, 3, 40, 24)
    views = tta_views(images, resolve_tta(RICH))
    assert len(views) == resolve_tta(RICH).views == (2 + 5) * 2
    assert torch.equal(views[0], images)
    assert views[1].shape[-2:] == (48, 29)  # 40 * 1.2, 24 * 1.2 rounded
    zoomed = torch.nn.functional.interpolate(images, size=(50, 30), mode="bilinear", align_corners=False)
    assert torch.allclose(views[1], torch.nn.functional.interpolate(images, size=(48, 29), mode="bilinear"))
    top_left, top_right, bottom_left, bottom_right, centre = views[2:7]
    assert torch.allclose(top_left, zoomed[..., :40, :24]) and torch.allclose(bottom_right, zoomed[..., 10:, 6:])
    assert torch.allclose(centre, TF.center_crop(zoomed, [40, 24]))
    assert all(v.shape[-2:] == (40, 24) for v in (top_right, bottom_left))
    for plain, mirrored in zip(views[:7], views[7:], strict=True):
        assert torch.equal(mirrored, plain.flip(-1))


def test_the_model_averages_the_logits_of_the_separately_computed_views():
    model = GenreClassifier("resnet10t", GENRES, tta=RICH).eval()
    images = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        separately = [model.net(view) for view in tta_views(images, model.test_time_augmentation())]
        expected = sum(separately) / len(separately)
        assert torch.allclose(model(images), expected, atol=1e-6)
        assert (model(images) - model.net(images)).abs().max() > 1e-3  # the views change the answer
        # The frozen-feature path (what the probe is fitted on) averages the same views.
        features = model.backbone_features(images, model.test_time_augmentation("val"))
        assert torch.allclose(model.classify_features(features), expected, atol=1e-5)
    assert model.test_time_augmentation("train") == TTA()  # training sees each image once
    assert model.hparams.tta == RICH


def test_tta_hflip_alone_is_the_flip_network_it_always_was():
    flip = GenreClassifier("resnet10t", GENRES, tta_hflip=True).eval()
    assert isinstance(flip.inference_net(), FlipAveraged) and flip.test_time_augmentation() == TTA(hflip=True)
    assert GenreClassifier("resnet10t", GENRES).eval().inference_net().__class__.__name__ == "ResNet"
    # model.tta's hflip defaults to tta_hflip (experiment=probe_cpu sets it): scales keep the flip.
    both = GenreClassifier("resnet10t", GENRES, tta_hflip=True, tta={"scales": [1.0, 1.2]}).eval()
    assert isinstance(both.inference_net(), TTAAveraged) and both.test_time_augmentation().views == 4
    both.set_flip_tta(False)  # genre-eval tta_hflip=false still turns the mirror off
    assert both.test_time_augmentation() == TTA(scales=(1.0, 1.2))


def test_overrides_of_a_checkpoints_views():
    old = {"tta_hflip": True}  # a checkpoint from before model.tta
    assert checkpoint_tta(old) == TTA(hflip=True)
    assert checkpoint_tta(old, {"scales": [1.0, 1.2]}) == TTA(hflip=True, scales=(1.0, 1.2))
    assert checkpoint_tta(old, {"scales": [1.0, 1.2]}, tta_hflip=False).views == 2
    assert checkpoint_tta({"tta_hflip": False, "tta": RICH}, tta_hflip=None) == resolve_tta(RICH)


def test_an_ensemble_member_averages_its_own_views():
    net = GenreClassifier("resnet10t", GENRES).net.eval()
    config = {"input_size": (3, 48, 32), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    member = EnsembleMember(net, config, config, resolve_tta(RICH))
    images = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        expected = torch.stack([net(v) for v in tta_views(images, resolve_tta(RICH))]).mean(0)
        assert torch.allclose(member(images), expected, atol=1e-6)
    assert member.flip and EnsembleMember(net, config, config, True).tta == TTA(hflip=True)


@pytest.mark.parametrize(
    "tta, message",
    [
        ({"scales": []}, "model.tta.scales=[] is not valid: expected a non-empty list of distinct numbers in [0.5, 2"),
        ({"scales": [1.0, 3]}, "model.tta.scales=[1.0, 3] is not valid"),
        ({"scales": "1.15"}, "model.tta.scales='1.15' is not valid: expected a list of factors such as [1.0, 1.15]"),
        ({"crops": "ten"}, "model.tta.crops='ten' is not valid: expected one of ['none', 'center', 'five']"),
        ({"crop_zoom": 1.0}, "model.tta.crop_zoom=1.0 is not valid"),
        ({"hflip": "yes"}, "model.tta.hflip='yes' is not valid: expected true or false"),
        ({"scale": [1.2]}, "model.tta.scale=[1.2] is not valid: expected only the keys"),
    ],
)
def test_a_bad_value_is_a_one_line_error_naming_the_key(tta: dict, message: str):
    with pytest.raises(ConfigError) as error:
        GenreClassifier("resnet10t", GENRES, tta=tta)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_the_onnx_cache_key_differs_per_views_and_keeps_flip_only_entries():
    def key(tta) -> str:
        return entry_folder("/cache", "abc", tta).name

    keys = [key(False), key(True), key(resolve_tta({"scales": [1.0, 1.2]})), key(resolve_tta(RICH))]
    keys.append(key(resolve_tta({**RICH, "crop_zoom": 1.3})))
    assert len(set(keys)) == len(keys)
    assert key(TTA(hflip=True)) == key(True) and key(TTA()) == key(False)  # exports made before model.tta


def test_with_tta_wraps_only_when_there_is_something_to_average():
    net = torch.nn.Identity()
    assert with_tta(net, TTA()) is net
    assert isinstance(with_tta(net, TTA(scales=(1.2,))), TTAAveraged)  # one view, but not the image itself
