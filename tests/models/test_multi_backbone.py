"""Several backbones, one head (model.backbone=[a,b]): a probe through genre-train, its per-backbone
feature stores, prediction, ONNX export, class-activation maps, and the one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from genre_lightning.inference.explain import target_layer
from genre_lightning.inference.predictor import Predictor
from genre_lightning.models.multi_backbone import MultiBackboneNet
from genre_lightning.training.feature_store import FeatureStore
from genre_lightning.training.module import GenreClassifier
from tests.helpers.cli import run_cli, run_entry_point
from tests.helpers.configs import FAST
from tests.helpers.optional import have_onnx_export, require

TWO = "model.backbone=[test_resnet,test_efficientnet]"
# The whole training split in one batch: the probe's one training step (LR 0) sees the same images in
# every run, so its store of non-flipped features is complete after the first run as well.
PROBE = ["experiment=probe_cpu", *FAST, "data.batch_size=256"]
CACHE_LINE = re.compile(
    r"Frozen-feature cache \(fit\): .* computed \(per backbone: test_resnet (\d+), test_efficientnet (\d+)\)"
)


def train(poster_root: Path, run: Path, cache: Path, *overrides: str) -> str:
    done = run_entry_point(
        "genre-train",
        *PROBE,
        f"data.root={poster_root}",
        f"callbacks.feature_cache.cache_dir={cache}",
        f"hydra.run.dir={run}",
        *overrides,
        cwd=run.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def two_runs(poster_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A test_resnet probe, then a test_resnet + test_efficientnet probe on the same feature cache."""
    folder = tmp_path_factory.mktemp("two_backbones")
    cache = folder / "cache"
    single_output = train(poster_root, folder / "single", cache)
    single_stores = {p.name for p in (cache / "features").iterdir()}
    output = train(poster_root, folder / "two", cache, TWO)
    return {
        "run": folder / "two",
        "cache": cache,
        "single_output": single_output,
        "single_stores": single_stores,
        "output": output,
        "checkpoint": json.loads((folder / "two" / "metrics.json").read_text())["best_ckpt_path"],
    }


@pytest.mark.slow
def test_adding_a_backbone_computes_only_its_features_and_each_store_holds_one_backbones(two_runs: dict):
    counts = CACHE_LINE.search(two_runs["output"])
    assert counts, two_runs["output"][-3000:]
    annotations = pd.read_csv(two_runs["run"] / "annotations.csv")
    # test_resnet's features all came from the single-backbone run's stores; test_efficientnet's were
    # computed, each image once per store: flip-averaged for the probe (training and validation
    # images), plain for the training step (the training images).
    split = annotations["split"]
    assert int(counts.group(1)) == 0
    assert int(counts.group(2)) == split.isin(["train", "val"]).sum() + (split == "train").sum()
    stores = {p.name: p for p in (two_runs["cache"] / "features").iterdir()}
    assert two_runs["single_stores"] < set(stores) and len(stores) == len(two_runs["single_stores"]) + 2

    model = GenreClassifier.from_checkpoint(two_runs["checkpoint"]).eval()
    assert isinstance(model.net, MultiBackboneNet) and model.hparams.tta_hflip
    predictor = Predictor.from_checkpoint(two_runs["checkpoint"], backend="torch")
    posters = annotations[annotations["split"].isin(["train", "val"])]
    with Image.open(posters["file_path"].iloc[0]) as first:
        assert first.size != tuple(model.data_config["input_size"][:0:-1])  # the transform resizes
    images = torch.stack([predictor.model_input(Image.open(p).convert("RGB")) for p in posters["file_path"]])
    keys = list(posters["sha256"])
    holders = []
    for index in (0, 1):  # each backbone's own flip-averaged pooled features, computed here
        expected = model.backbone_features(images, flip_average=True, parts=[index]).numpy()
        matching = [
            name
            for name, folder in stores.items()
            if all(key in (store := FeatureStore(name, folder)) for key in keys)
            and (rows := store.rows(keys)).shape == expected.shape
            and np.allclose(rows, expected, atol=1e-5)
        ]
        assert len(matching) == 1, (index, matching)
        holders += matching
    # test_resnet's store is the one the single-backbone run wrote; test_efficientnet's is new.
    assert holders[0] in two_runs["single_stores"] and holders[1] not in two_runs["single_stores"]
    assert model.net.num_features == sum(FeatureStore(name, stores[name]).rows(keys[:1]).shape[1] for name in holders)


@pytest.mark.slow
def test_the_two_backbone_probe_predicts_and_exports_like_any_checkpoint(two_runs: dict, tmp_path: Path):
    require(have_onnx_export(), 'needs the export extra: pip install -e ".[export]"')
    import onnxruntime

    tested = pd.read_csv(two_runs["run"] / "test_predictions.csv")
    columns = [c for c in tested.columns if c.startswith("p_")]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i, source in enumerate(tested["file_path"]):
        (inbox / f"{i:03d}.jpg").write_bytes(Path(source).read_bytes())
    done = run_cli(
        "genre-predict", f"ckpt_path={two_runs['checkpoint']}", f"input={inbox}", "num_workers=0", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    predicted = pd.read_csv(next(tmp_path.rglob("predictions.csv")))
    np.testing.assert_allclose(predicted[columns].to_numpy(), tested[columns].to_numpy(), atol=1e-5)

    done = run_entry_point(
        "genre-export", f"ckpt_path={two_runs['checkpoint']}", "format=onnx", f"hydra.run.dir={tmp_path}", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    model = GenreClassifier.from_checkpoint(two_runs["checkpoint"]).eval()
    predictor = Predictor.from_checkpoint(two_runs["checkpoint"], backend="torch")
    images = torch.stack([predictor.model_input(Image.open(p).convert("RGB")) for p in tested["file_path"]])
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    exported = session.run(None, {name: images.numpy()})[0]
    with torch.inference_mode():
        reference = model(images).numpy()
    assert np.abs(exported - reference).max() < 1e-4
    assert np.abs(model.net(images).detach().numpy() - reference).max() > 1e-4  # the flip averaging is exported


@pytest.mark.slow
def test_class_activation_maps_explain_the_first_backbones_last_stage(two_runs: dict, tmp_path: Path):
    tested = pd.read_csv(two_runs["run"] / "test_predictions.csv")
    poster = tested["file_path"].iloc[0]
    done = run_entry_point(
        "genre-predict",
        f"ckpt_path={two_runs['checkpoint']}",
        f"input={poster}",
        "explain=true",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "explanations").rglob("*.png"))
    net = GenreClassifier.from_checkpoint(two_runs["checkpoint"]).net
    assert target_layer(net) is net.backbones[0].layer4  # test_resnet's last stage


def test_the_network_input_is_converted_for_each_backbone():
    net = MultiBackboneNet(["test_resnet", "test_efficientnet"], 4, data_config={"input_size": [3, 40, 30]})
    single = timm.create_model("test_efficientnet", num_classes=0).eval()
    single.load_state_dict(net.backbones[1].state_dict())
    net.eval()
    images = torch.randn(2, 3, 40, 30)  # normalised for test_resnet (mean = std = 0.5)
    own = (images * 0.5 + 0.5 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(net.forward_parts(images, [1]), single(own), atol=1e-5, rtol=1e-5)
        assert net(images).shape == (2, 4) and net.forward_features(images).shape == (2, 96 + 256)
    assert net.part_data_configs[1]["resized_from"] == net.data_config  # bicubic here, bilinear there


def test_bad_backbone_lists_are_one_line_errors(poster_root: Path, tmp_path: Path):
    efficientnet = tmp_path / "test_efficientnet.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_efficientnet").state_dict().items()}, efficientnet)
    cases = [
        (
            ["model.backbone=[test_resnet,resnet_18]"],
            r"model\.backbone\[1\]='resnet_18' is not valid: expected a timm model name; did you mean resnet18",
        ),
        (
            [TWO, f"model.weights=[{efficientnet}]"],
            r"model\.weights=\['.*'\] is not valid: expected .*: 2 files for "
            r"model\.backbone=\['test_resnet', 'test_efficientnet'\], not 1",
        ),
        (
            [TWO, f"model.weights=[{efficientnet},null]"],
            rf"model\.weights\[0\]='{efficientnet}' is not valid: expected timm weights for backbone 0, test_resnet; "
            r"the file holds the weights of test_efficientnet, backbone 1 of model\.backbone",
        ),
    ]
    for overrides, message in cases:
        done = run_entry_point("genre-train", *FAST, f"data.root={poster_root}", *overrides, cwd=tmp_path)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert done.returncode == 2 and len(errors) == 1, done.stderr[-2000:]
        assert re.match(f"error: {message}", errors[0]), errors[0]


@pytest.mark.slow
def test_the_model_card_names_the_backbones_and_its_outline_command_quotes_the_list(two_runs: dict, tmp_path: Path):
    card = tmp_path / "README.md"
    done = run_entry_point(
        "genre-export", f"ckpt_path={two_runs['checkpoint']}", "format=card", f"output={card}", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = card.read_text()
    assert text.splitlines()[0] == (
        "# Model card: test_resnet + test_efficientnet (features concatenated) movie-poster genre classifier"
    )
    assert "['test_resnet'" not in text  # no Python list repr anywhere
