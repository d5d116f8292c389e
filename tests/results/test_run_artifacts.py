"""What a tested run leaves for a person to read: tables, figures, TensorBoard tags and hparams.

Every check uses the artifacts of one short real run (the ``tiny_run`` fixture) and recomputes
the numbers independently (sklearn, numpy) from the per-image predictions it wrote.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from rich.console import Console
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from genre_lightning.cli.common import build_callbacks
from genre_lightning.cli.evaluation import eval_datamodule, evaluate
from genre_lightning.cli.train import train
from genre_lightning.data.dataset import build_transforms
from genre_lightning.data.imageio import read_rgb
from genre_lightning.models.checkpoint_io import load_module, read_checkpoint
from genre_lightning.results import run_artifacts as artifacts_module
from genre_lightning.results.figures import save_png, to_display
from genre_lightning.results.tables import Predictions, calibration_bins, per_class_table
from genre_lightning.training.module import GenreClassifier
from tests.helpers.configs import FAST, TEST_BACKBONE, compose_config, train_config

CLASSES = ["Action", "Comedy", "Horror", "Romance"]
FIGURES = ["confusion_matrix", "mistakes", "genre_distribution", "reliability", "train_samples"]


def metrics_of(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def split_rows(run: Path) -> pd.DataFrame:
    annotations = pd.read_csv(run / "annotations.csv")
    return annotations[annotations["split"] == "test"]


def predictions_of(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "test_predictions.csv")


@pytest.mark.slow
def test_confusion_matrix_counts_every_test_image_and_its_diagonal_is_the_accuracy(tiny_run: Path):
    matrix = pd.read_csv(tiny_run / "confusion_matrix.csv", index_col=0)
    assert list(matrix.index) == CLASSES and list(matrix.columns) == CLASSES
    expected = split_rows(tiny_run)
    assert matrix.to_numpy().sum() == len(expected)
    # Rows are the true genres: each row holds that genre's test images.
    assert matrix.sum(axis=1).to_dict() == expected["label"].value_counts().reindex(CLASSES).to_dict()
    accuracy = np.trace(matrix.to_numpy()) / matrix.to_numpy().sum()
    assert accuracy == pytest.approx(metrics_of(tiny_run)["test"]["test/acc"], abs=1e-6)


@pytest.mark.slow
def test_per_class_metrics_agree_with_sklearn_on_the_same_predictions(tiny_run: Path):
    frame = predictions_of(tiny_run)
    expected = split_rows(tiny_run)
    assert len(frame) == len(expected) and set(frame["file_path"]) == set(expected["file_path"])
    assert dict(zip(frame["file_path"], frame["label"], strict=True)) == dict(
        zip(expected["file_path"], expected["label"], strict=True)
    )
    probs = frame[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert list(frame["top1"]) == [CLASSES[i] for i in probs.argmax(axis=1)]
    metrics = metrics_of(tiny_run)["test"]

    precision, recall, f1, _ = precision_recall_fscore_support(
        frame["label"], frame["top1"], labels=CLASSES, zero_division=0
    )
    for i, name in enumerate(CLASSES):
        assert metrics[f"test/precision/{name}"] == pytest.approx(precision[i], abs=1e-6), name
        assert metrics[f"test/recall/{name}"] == pytest.approx(recall[i], abs=1e-6), name
        assert metrics[f"test/f1/{name}"] == pytest.approx(f1[i], abs=1e-6), name
    macro = precision_recall_fscore_support(
        frame["label"], frame["top1"], labels=CLASSES, average="macro", zero_division=0
    )
    assert [metrics["test/precision_macro"], metrics["test/recall_macro"], metrics["test/f1_macro"]] == pytest.approx(
        list(macro[:3]), abs=1e-6
    )
    targets = frame["label"].map(CLASSES.index)
    top2 = top_k_accuracy_score(targets, probs, k=2, labels=range(len(CLASSES)))
    assert metrics["test/acc_top2"] == pytest.approx(top2, abs=1e-6)
    written = pd.read_csv(tiny_run / "confusion_matrix.csv", index_col=0).to_numpy()
    np.testing.assert_array_equal(written, confusion_matrix(frame["label"], frame["top1"], labels=CLASSES))


@pytest.mark.slow
def test_ece_matches_a_plain_numpy_computation_and_the_reliability_bins(tiny_run: Path):
    frame = predictions_of(tiny_run)
    probs = frame[[f"p_{c}" for c in CLASSES]].to_numpy()
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == frame["label"].map(CLASSES.index).to_numpy()
    edges = np.linspace(0, 1, 16)
    ece = 0.0
    for lower, upper in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence >= lower) & (confidence < upper)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    assert metrics_of(tiny_run)["test"]["test/ece"] == pytest.approx(ece, abs=1e-5)

    targets = torch.tensor(frame["label"].map(CLASSES.index).to_numpy())
    bins = calibration_bins(torch.tensor(probs), targets, 15)
    assert bins["count"].sum() == len(frame)
    from_bins = (bins["count"] / len(frame) * (bins["accuracy"] - bins["confidence"]).abs()).sum()
    assert from_bins == pytest.approx(ece, abs=1e-5)


def expected_grid_size(images: int, columns: int) -> tuple[int, int]:
    columns = max(1, min(columns, images))
    rows = max(1, math.ceil(images / columns))
    return round(columns * 2.2 * 100), round((rows * 3.0 + 0.5) * 100)


@pytest.mark.slow
def test_every_figure_is_a_png_of_the_expected_size(tiny_run: Path):
    frame = predictions_of(tiny_run)
    wrong = int((frame["label"] != frame["top1"]).sum())
    expected = {
        "confusion_matrix": (1100, 500),
        "genre_distribution": (700, 450),
        "reliability": (600, 700),
        "mistakes": expected_grid_size(min(24, wrong), 6),
        "train_samples": expected_grid_size(4 * len(CLASSES), 4),  # 4 per genre, one row per genre
    }
    for name in FIGURES:
        path = tiny_run / "figures" / f"{name}.png"
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == expected[name], name
            pixels = np.asarray(image.convert("RGB"))
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, f"{name} looks blank"


def drawn_mistakes(figure) -> list[tuple[str, str, float, str]]:
    """(true, predicted, probability, file name) as the captions drawn above the images read."""
    drawn = []
    for ax in figure.axes:
        if ax.images:
            first, second, name = ax.get_title().splitlines()
            predicted, probability = second.removeprefix("Pred: ").rstrip(")").split(" (")
            drawn.append((first.removeprefix("True: ").removesuffix(" /"), predicted, float(probability), name))
    return drawn


@pytest.mark.slow
def test_mistakes_figure_draws_the_most_confident_wrong_predictions_in_order(tiny_run: Path):
    frame = predictions_of(tiny_run)
    wrong = frame[frame["label"] != frame["top1"]]
    assert len(wrong) >= 4  # the fixture run makes mistakes; without them this would check nothing
    probs = torch.tensor(frame[[f"p_{c}" for c in CLASSES]].to_numpy())
    targets = torch.tensor(frame["label"].map(CLASSES.index).to_numpy())
    predictions = Predictions(probs, targets, list(frame["file_path"]), CLASSES)
    figure, shown = artifacts_module.mistakes_figure(predictions, "test", max_mistakes=3, columns=6)

    expected = wrong.sort_values("p_top1", ascending=False).head(3)
    assert [(m.file_path, m.true, m.predicted) for m in shown] == list(
        zip(expected["file_path"], expected["label"], expected["top1"], strict=True)
    )
    assert [m.p_top1 for m in shown] == pytest.approx(list(expected["p_top1"]), abs=1e-6)
    assert [m.p_top1 for m in shown] == sorted((m.p_top1 for m in shown), reverse=True)
    assert all(m.p_top1 >= p for m in shown for p in wrong["p_top1"].drop(expected.index))
    assert drawn_mistakes(figure) == [
        (m.true, m.predicted, pytest.approx(m.p_top1, abs=5e-4), Path(m.file_path).name[:28]) for m in shown
    ]
    assert figure.get_suptitle() == f"Most confident mistakes, test split: 3 of {len(wrong)} shown"


def test_mistakes_figure_leaves_out_confident_correct_predictions(poster_root: Path):
    paths = [str(p) for p in sorted(poster_root.rglob("*.jpg"))[:5]]
    probs = torch.tensor(
        [
            [0.97, 0.01, 0.01, 0.01],  # Action, right and most confident of all: not a mistake
            [0.60, 0.20, 0.10, 0.10],  # Comedy predicted Action at 0.60
            [0.10, 0.80, 0.05, 0.05],  # Horror predicted Comedy at 0.80
            [0.30, 0.30, 0.35, 0.05],  # Action predicted Horror at 0.35 (beyond max_mistakes)
            [0.05, 0.05, 0.05, 0.85],  # Romance, right
        ]
    )
    targets = torch.tensor([0, 1, 2, 0, 3])
    figure, shown = artifacts_module.mistakes_figure(Predictions(probs, targets, paths, CLASSES), "val", 2, 6)
    assert [(m.file_path, m.true, m.predicted) for m in shown] == [
        (paths[2], "Horror", "Comedy"),
        (paths[1], "Comedy", "Action"),
    ]
    assert [(t, p, prob) for t, p, prob, _ in drawn_mistakes(figure)] == [
        ("Horror", "Comedy", 0.8),
        ("Comedy", "Action", 0.6),
    ]
    assert figure.get_suptitle() == "Most confident mistakes, val split: 2 of 3 shown"


def test_mistakes_figure_draws_a_file_name_that_is_not_utf8(poster_root: Path, tmp_path: Path):
    """Such names are kept by the data pipeline; drawing one must not kill the run after testing."""
    odd = tmp_path / os.fsdecode(b"caf\xe9 poster.jpg")
    shutil.copyfile(sorted(poster_root.rglob("*.jpg"))[0], odd)
    predictions = Predictions(torch.tensor([[0.1, 0.9, 0.0, 0.0]]), torch.tensor([0]), [str(odd)], CLASSES)
    figure, shown = artifacts_module.mistakes_figure(predictions, "test", 4, 6)
    assert [m.file_path for m in shown] == [str(odd)]
    assert [name for *_, name in drawn_mistakes(figure)] == ["caf\ufffd poster.jpg"]
    assert save_png(figure, tmp_path / "mistakes.png").stat().st_size > 0


@pytest.mark.slow
def test_training_samples_are_de_normalised_back_to_the_picture(tiny_run: Path, poster_root: Path):
    """The eval transform at 32 px is a plain bicubic resize plus normalisation: undoing the
    normalisation must give back the resized poster."""
    data_config = {
        "input_size": (3, 32, 32),
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "crop_pct": 1.0,
        "crop_mode": "squash",
    }
    _, eval_transform = build_transforms(data_config, None)
    poster = read_rgb(next((poster_root / "Horror").glob("*.jpg")))
    shown = to_display(eval_transform(poster), data_config["mean"], data_config["std"])
    resized = np.asarray(poster.resize((32, 32), Image.Resampling.BICUBIC)) / 255
    assert shown.shape == (32, 32, 3)
    np.testing.assert_allclose(shown, resized, atol=1e-5)


@pytest.mark.slow
def test_printed_table_shows_the_metrics_json_numbers(tiny_run: Path):
    metrics = metrics_of(tiny_run)["test"]
    support = pd.read_csv(tiny_run / "confusion_matrix.csv", index_col=0).sum(axis=1).tolist()
    console = Console(record=True, width=120)
    console.print(per_class_table(metrics, CLASSES, support))
    text = console.export_text()
    for name, count in zip(CLASSES, support, strict=True):
        row = next(line for line in text.splitlines() if f" {name} " in line)
        cells = row.replace("│", " ").split()
        assert cells == [
            name,
            f"{metrics[f'test/precision/{name}']:.3f}",
            f"{metrics[f'test/recall/{name}']:.3f}",
            f"{metrics[f'test/f1/{name}']:.3f}",
            str(count),
        ]
    assert f"ECE {metrics['test/ece']:.3f}" in text and f"top-2 accuracy {metrics['test/acc_top2']:.3f}" in text


@pytest.mark.slow
def test_backbone_lr_is_logged_from_its_milestone_under_a_stable_name(tiny_run: Path):
    events = EventAccumulator(str(tiny_run / "tensorboard"))
    events.Reload()
    head = events.Scalars("lr-AdamW/head")
    backbone = events.Scalars("lr-AdamW/backbone1")
    assert [e.step for e in head] == [0, 3]  # one value per epoch start; 3 batches per epoch
    assert [e.step for e in backbone] == [3]  # unfrozen at epoch 1, logged at epoch 1
    assert backbone[0].value == pytest.approx(head[1].value * 0.1)  # finetune.backbone_lr_scale


@pytest.mark.slow
def test_genre_eval_writes_the_same_artifacts_for_the_same_checkpoint(tiny_run: Path, tmp_path: Path):
    best = metrics_of(tiny_run)["best_ckpt_path"]
    cfg = compose_config("eval", [*FAST,
                                  f"ckpt_path={best}"], tmp_path)  # fmt: skip
    evaluate(cfg)
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "confusion_matrix.csv"), pd.read_csv(tiny_run / "confusion_matrix.csv")
    )
    ours, theirs = predictions_of(tmp_path), predictions_of(tiny_run)
    assert list(ours["file_path"]) == list(theirs["file_path"])
    np.testing.assert_allclose(ours.filter(like="p_").to_numpy(), theirs.filter(like="p_").to_numpy(), atol=1e-5)
    for name in FIGURES:
        assert (tmp_path / "figures" / f"{name}.png").is_file(), name
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"test/confusion_matrix", "test/mistakes", "train/samples"} <= set(events.Tags()["images"])


def eval_config(ckpt: Path | str, output_dir: Path, *overrides: str):
    return compose_config("eval", [*FAST, f"ckpt_path={ckpt}", *overrides], output_dir)


def random_steps(transform) -> list[str]:
    return [type(t).__name__ for t in transform.transforms if type(t).__name__.startswith(("Random", "ColorJitter"))]


@pytest.mark.slow
@pytest.mark.parametrize("augment", ["null", "{hflip: 1.0, scale: [0.5, 1.0]}"])
def test_genre_eval_shows_training_samples_with_the_checkpoints_augmentation(
    augment: str, poster_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """eval.yaml's data.augment (the posters default: crop, flip, colour jitter) must not replace
    what the checkpoint was trained with in genre-eval's training-samples figure."""
    short = ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
    train(train_config(poster_root, tmp_path / "run", *short, "logger=csv", f"data.augment={augment}"))
    (ckpt,) = (tmp_path / "run" / "checkpoints").glob("epoch*.ckpt")
    checkpoint = read_checkpoint(ckpt)
    cfg = eval_config(ckpt, tmp_path / "eval")
    assert cfg.data.augment is not None  # the default genre-eval would otherwise have used
    datamodule = eval_datamodule(cfg, load_module(GenreClassifier, checkpoint), checkpoint)
    datamodule.prepare_data()
    datamodule.setup("test")
    train_transform = datamodule.datasets["train"].transform
    if augment == "null":
        assert datamodule.augment is None and random_steps(train_transform) == []
        assert train_transform is datamodule.datasets["val"].transform
        # Then genre-eval draws the very figure genre-train's test drew (same posters, no randomness).
        evaluate(cfg)
        pixels = [
            np.asarray(Image.open(run / "figures" / "train_samples.png"))
            for run in (tmp_path / "run", tmp_path / "eval")
        ]
        np.testing.assert_array_equal(*pixels)
    else:
        # (Hydra merges the override into the posters default: color_jitter stays.)
        assert datamodule.augment == {"scale": [0.5, 1.0], "hflip": 1.0, "color_jitter": 0.2}
        flip = next(t for t in train_transform.transforms if type(t).__name__ == "RandomHorizontalFlip")
        assert flip.p == 1.0  # the checkpoint's, not eval.yaml's 0.5

    # A checkpoint from before genre-train recorded it: eval.yaml's data.augment, and a line saying so.
    old = torch.load(ckpt, weights_only=True)
    del old["PosterDataModule"]["augment"]
    torch.save(old, tmp_path / "old.ckpt")
    cfg = eval_config(
        tmp_path / "old.ckpt", tmp_path / "eval", f"data.split_file={tmp_path / 'run' / 'annotations.csv'}"
    )
    with caplog.at_level("INFO", logger="genre_lightning.models.checkpoint_io"):
        old_checkpoint = read_checkpoint(tmp_path / "old.ckpt")
        fallback = eval_datamodule(cfg, load_module(GenreClassifier, old_checkpoint), old_checkpoint)
    assert fallback.augment == {"scale": [0.6, 1.0], "hflip": 0.5, "color_jitter": 0.2}
    assert any("does not record its training augmentation" in r.getMessage() for r in caplog.records)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_tensorboard_server_serves_the_scalars_images_and_hparams(tiny_run: Path, tmp_path: Path):
    port = free_port()
    log = (tmp_path / "tensorboard.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tiny_run / "tensorboard"),
         "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/data/plugin"
    try:
        scalars: dict = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "test/acc" not in scalars.get(".", {}):
            assert server.poll() is None, (tmp_path / "tensorboard.log").read_text()[-2000:]
            with contextlib.suppress(OSError):  # not listening yet
                scalars = get_json(f"{base}/scalars/tags")
            time.sleep(0.5)
        scalar_tags = set(scalars.get(".", {}))
        assert {
            "train/loss",
            "train/acc",
            "val/loss",
            "val/acc",
            "val/f1_macro",
            "test/acc",
            "test/f1_macro",
            "test/acc_top2",
            "test/ece",
            "test/precision/Horror",
            "lr-AdamW/head",
            "lr-AdamW/backbone1",
        } <= scalar_tags, scalar_tags

        images = get_json(f"{base}/images/tags")["."]
        assert {f"test/{n}" for n in FIGURES[:4]} | {"train/samples"} <= set(images)
        (entry,) = get_json(f"{base}/images/images?run=.&tag=test/confusion_matrix")
        with urllib.request.urlopen(f"{base}/images/individualImage?{entry['query']}", timeout=10) as response:
            assert Image.open(BytesIO(response.read())).size == (1100, 500)

        statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
        query = {"experimentName": "", "allowedStatuses": statuses, "colParams": [], "startIndex": 0, "sliceSize": 10}
        groups = get_json(f"{base}/hparams/session_groups", query)["sessionGroups"]
        (group,) = groups
        assert group["hparams"]["model.backbone"] == TEST_BACKBONE and group["hparams"]["finetune.milestones"] == "[1]"
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        metrics = metrics_of(tiny_run)
        assert values["val/acc"] == pytest.approx(metrics["final_val"]["val/acc"], abs=1e-6)
        assert values["test/acc"] == pytest.approx(metrics["test"]["test/acc"], abs=1e-6)
        # Where the run came from (utils/environment.py): in the HPARAMS tab, and as a table in the TEXT tab.
        environment = metrics["environment"]
        assert group["hparams"]["environment.packages.torch"] == environment["packages"]["torch"]
        assert group["hparams"]["environment.code.commit"] == str(environment["code"]["commit"])
        (text,) = get_json(f"{base}/text/text?run=.&tag=environment/text_summary")
        for key, value in (
            ("packages.torch", environment["packages"]["torch"]),
            ("code.commit", environment["code"]["commit"]),
        ):
            assert f"<td>{key}</td>\n<td>{value}</td>" in text["text"], text["text"]
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.parametrize("config_name", ["train", "eval"])
def test_the_artifacts_group_turns_the_callback_on_and_off(config_name: str, tmp_path: Path):
    def artifacts(*overrides: str) -> list:
        callbacks = build_callbacks(compose_config(config_name, list(overrides), tmp_path))
        return [c for c in callbacks if isinstance(c, artifacts_module.TestArtifacts)]

    (default,) = artifacts("artifacts.max_mistakes=5")
    assert default.output_dir == tmp_path and default.max_mistakes == 5
    assert artifacts("artifacts=none") == []


@pytest.mark.slow
def test_artifacts_cam_adds_the_mistakes_with_their_maps(tiny_run: Path, tmp_path: Path):
    """artifacts.cam=true: figures/mistakes_cam.png (the mistakes grid, each poster under its map) and its
    TensorBoard image; off by default (the training run has none)."""
    assert not (tiny_run / "figures" / "mistakes_cam.png").exists()
    evaluate(eval_config(metrics_of(tiny_run)["best_ckpt_path"], tmp_path, "artifacts.cam=true"))
    figures_dir = tmp_path / "figures"
    with Image.open(figures_dir / "mistakes_cam.png") as cam, Image.open(figures_dir / "mistakes.png") as plain:
        assert cam.size == plain.size  # one cell per mistake shown, as in the mistakes grid
        assert np.abs(np.asarray(cam.convert("RGB"), float) - np.asarray(plain.convert("RGB"), float)).mean() > 5
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert "test/mistakes_cam" in events.Tags()["images"]
