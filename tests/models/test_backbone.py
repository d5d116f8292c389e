"""Backbones by name, weights from a local file, and the one-line errors a user can hit."""

import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from genre_lightning.models.backbone import check_backbone_name, create_backbone
from genre_lightning.training.module import GenreClassifier
from genre_lightning.utils.errors import ConfigError
from tests.helpers.cli import run_cli
from tests.helpers.configs import FAST


def test_any_timm_name_builds_with_a_four_way_head():
    net = create_backbone("mobilenetv3_small_050", num_classes=4)
    assert net.get_classifier().out_features == 4
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 4)


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(ConfigError) as err:
        create_backbone("resnet_18", num_classes=4)
    message = str(err.value)
    assert message.startswith("model.backbone='resnet_18'") and "resnet18" in message and "\n" not in message


def test_hub_and_local_folder_names_pass_the_name_check():
    for name in ("hf-hub:timm/resnet18.a1_in1k", "hf_hub:timm/resnet18.a1_in1k", "local-dir:/models/resnet18"):
        check_backbone_name(name)  # left to timm.create_model, which resolves them
    with pytest.raises(ConfigError, match="is not valid: expected a timm model name"):
        check_backbone_name("hf-hubb:timm/resnet18")


def test_local_weights_file_is_loaded_except_the_classifier(tmp_path: Path):
    source = timm.create_model("resnet10t", num_classes=1000)
    torch.nn.init.normal_(source.conv1[0].weight)
    path = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    model = GenreClassifier("resnet10t", ["a", "b", "c", "d"], weights=str(path))
    assert torch.equal(model.net.conv1[0].weight, source.conv1[0].weight)
    assert model.net.fc.out_features == 4


def test_weights_of_another_architecture_are_a_one_line_error(tmp_path: Path):
    """timm loads non-strictly once the head is replaced: without a check, these would train from
    partly or wholly random weights."""
    resnet = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet10t").state_dict().items()}, resnet)
    lightning = tmp_path / "genre.pth"  # the network of a GenreClassifier checkpoint: every name under net.
    torch.save(
        {f"net.{k}": v for k, v in timm.create_model("resnet10t", num_classes=4).state_dict().items()}, lightning
    )
    lite0 = tmp_path / "tf_efficientnet_lite0.safetensors"  # EfficientNet-B0 without squeeze-excitation
    save_file({k: v.contiguous() for k, v in timm.create_model("tf_efficientnet_lite0").state_dict().items()}, lite0)
    cases = [
        ("efficientnet_b0", lite0, r"64 of 309 tensors missing \(e\.g\. \['blocks\.0\.0\.se\."),  # SE stays random
        ("resnet18", resnet, r"\(size mismatch for \S+: copying a param with shape"),
        ("resnet10t", lightning, r"a Lightning checkpoint\? resume it with ckpt_path="),
    ]
    for backbone, path, reason in cases:
        with pytest.raises(ConfigError, match=rf"^model\.weights='{path}' is not valid: expected timm weights for "):
            try:
                create_backbone(backbone, num_classes=4, weights=str(path))
            except ConfigError as err:
                assert re.search(reason, str(err)) and "\n" not in str(err), str(err)
                raise


def test_missing_weights_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"^model.weights='.*nope.safetensors' is not valid"):
        create_backbone("resnet10t", num_classes=4, weights=str(tmp_path / "nope.safetensors"))


@pytest.mark.slow
def test_unreachable_hub_says_how_to_go_on(poster_root: Path, tmp_path: Path):
    done = run_cli(
        "genre-train",
        *FAST,
        f"data.root={poster_root}",
        "model.backbone=resnet18",
        "model.pretrained=true",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert "could not download pretrained weights for 'resnet18'" in last
    assert "model.weights=" in last and "model.pretrained=false" in last
