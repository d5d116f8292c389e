"""genre-ensemble: two checkpoints of different backbones as one model, evaluated, predicted and
exported like any other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from genre_lightning.cli.export import export
from genre_lightning.cli.predict import predict
from genre_lightning.cli.train import train
from tests.helpers.cli import run_cli, run_entry_point
from tests.helpers.configs import compose_config, train_config
from tests.helpers.optional import have_onnx_export, require

pytestmark = pytest.mark.slow  # every test uses the tiny_run fixture (a training run)
PROBABILITIES = [f"p_{genre}" for genre in ("Action", "Comedy", "Horror", "Romance")]


def best_checkpoint(run: Path) -> str:
    return json.loads((run / "metrics.json").read_text())["best_ckpt_path"]


@pytest.fixture(scope="module")
def second_member(tiny_run: Path, poster_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another backbone on the tiny run's split, normalised with ImageNet's mean/std instead of the
    tests' backbone's 0.5, and with flip test-time augmentation of its own."""
    run = tmp_path_factory.mktemp("member")
    overrides = [
        f"data.split_file={tiny_run / 'annotations.csv'}",
        "model.backbone=tf_mobilenetv3_small_minimal_100",  # bilinear like test_resnet: the same pixels
        "+model.data_config.mean=[0.485,0.456,0.406]",
        "+model.data_config.std=[0.229,0.224,0.225]",
        "model.tta_hflip=true",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
    ]
    train(train_config(poster_root, run, *overrides))
    return run


@pytest.fixture(scope="module")
def ensemble_run(tiny_run: Path, second_member: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``genre-ensemble`` through its console script, from a folder outside the repo, stdout piped."""
    folder = tmp_path_factory.mktemp("ensemble")
    members = f"ckpt_paths=[{best_checkpoint(tiny_run)},{best_checkpoint(second_member)}]"
    with open(folder / "stdout.log", "w") as stdout:
        done = run_cli("genre-ensemble", "debug=tests", members, "hydra.run.dir=run", cwd=folder, stdout=stdout)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Run folder:" in (folder / "stdout.log").read_text() + done.stderr
    return folder / "run"


def test_the_ensemble_is_the_average_of_its_members_probabilities(tiny_run, second_member, ensemble_run):
    first, second, ensemble = (
        pd.read_csv(run / "test_predictions.csv").set_index("file_path")
        for run in (tiny_run, second_member, ensemble_run)
    )
    assert not np.allclose(first[PROBABILITIES], second.loc[first.index, PROBABILITIES])  # two different models
    average = (first[PROBABILITIES] + second.loc[first.index, PROBABILITIES]) / 2
    np.testing.assert_allclose(ensemble.loc[first.index, PROBABILITIES], average, atol=1e-5)
    metrics = json.loads((ensemble_run / "metrics.json").read_text())["test"]
    genres = np.array([p.removeprefix("p_") for p in PROBABILITIES])
    expected = (genres[average.to_numpy().argmax(axis=1)] == first["label"].to_numpy()).mean()
    assert metrics["test/acc"] == pytest.approx(expected)
    assert (ensemble_run / "confusion_matrix.csv").is_file() and (ensemble_run / "figures").is_dir()


def test_genre_predict_and_an_onnx_export_serve_the_ensemble(ensemble_run: Path, tmp_path: Path):
    checkpoint = ensemble_run / "checkpoints" / "ensemble.ckpt"
    tested = pd.read_csv(ensemble_run / "test_predictions.csv")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i, source in enumerate(tested["file_path"]):
        (inbox / f"{i:03d}.jpg").write_bytes(Path(source).read_bytes())
    predict(compose_config("predict", [f"ckpt_path={checkpoint}", f"input={inbox}", "num_workers=0"], tmp_path / "p"))
    predicted = pd.read_csv(tmp_path / "p" / "predictions.csv").sort_values("file_path")
    np.testing.assert_allclose(predicted[PROBABILITIES], tested[PROBABILITIES], atol=1e-5)

    require(have_onnx_export(), "format=onnx needs the export extra")
    sidecar = export(compose_config("export", [f"ckpt_path={checkpoint}", "format=onnx"], tmp_path / "x"))
    assert sidecar["parity"]["passed"] and sidecar["parity"]["max_abs_logit_diff"] < 1e-4
    assert sidecar["backbone"] == "ensemble" and (tmp_path / "x" / "model.onnx").is_file()


def test_members_from_different_splits_are_refused_in_one_line(tiny_run: Path, tmp_path: Path):
    checkpoint = torch.load(best_checkpoint(tiny_run), map_location="cpu", weights_only=True)
    checkpoint["PosterDataModule"]["split_digest"] = "another split"
    other = tmp_path / "other" / "checkpoints" / "other.ckpt"
    other.parent.mkdir(parents=True)
    torch.save(checkpoint, other)
    for members, expected in (
        (f"[{best_checkpoint(tiny_run)},{other}]", "checkpoints trained on one split"),
        (f"[{best_checkpoint(tiny_run)}]", "a list of at least two checkpoints"),
    ):
        done = run_entry_point(
            "genre-ensemble", "debug=tests", f"ckpt_paths={members}", "hydra.run.dir=e", cwd=tmp_path
        )
        assert done.returncode == 2, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ckpt_paths=") and expected in last, done.stderr[-2000:]
