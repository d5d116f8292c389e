"""The quick start as a user runs it: train -> test -> metrics.json, then eval and predict."""

import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from genre_lightning.cli.evaluation import evaluate
from genre_lightning.cli.train import train
from tests.helpers.cli import run_cli, run_entry_point
from tests.helpers.configs import FAST, compose_config, train_config

pytestmark = pytest.mark.slow
CHANCE = 0.25


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``genre-train experiment=demo``, exactly the quick start, in a temporary outputs folder."""
    base = tmp_path_factory.mktemp("quickstart")
    done = run_cli(
        "genre-train",
        "experiment=demo",
        f"paths.output_root={base}",
        f"hydra.run.dir={base}/run",
        "trainer.enable_progress_bar=false",
        cwd=base,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SYNTHETIC" in done.stdout + done.stderr and "data.root=/path/to/posters" in done.stdout + done.stderr
    return base / "run"


def test_demo_learns_well_above_chance(demo_run: Path):
    metrics = json.loads((demo_run / "metrics.json").read_text())
    assert metrics["test"]["test/acc"] >= 0.6, metrics["test"]
    assert metrics["test"]["test/f1_macro"] >= 0.55
    assert metrics["test"]["test/acc_top2"] >= metrics["test"]["test/acc"]
    # Each genre's recall is the share of its test posters predicted as it (from the per-image CSV).
    predictions = pd.read_csv(demo_run / "test_predictions.csv")
    for genre in ("Action", "Comedy", "Horror", "Romance"):
        own = predictions[predictions["label"] == genre]
        assert len(own) > 0 and metrics["test"][f"test/recall/{genre}"] == pytest.approx(
            (own["top1"] == genre).mean(), abs=1e-6
        ), genre


def test_run_folder_holds_everything_and_tests_the_best_checkpoint(demo_run: Path):
    for name in ("config.yaml", "annotations.csv", "data_report.json", "metrics.json"):
        assert (demo_run / name).is_file(), name
    checkpoints = sorted(p.name for p in (demo_run / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in checkpoints and len(checkpoints) == 2
    metrics = json.loads((demo_run / "metrics.json").read_text())
    best = Path(metrics["best_ckpt_path"])
    assert best.parent == demo_run / "checkpoints" and best.name != "last.ckpt"
    assert metrics["test_ckpt_path"] == metrics["best_ckpt_path"]  # what trainer.test loaded
    # The best checkpoint is the one with the highest val/acc, named by it.
    assert f"val_acc{metrics['best_val']['val/acc']:.4f}" in best.name
    annotations = pd.read_csv(demo_run / "annotations.csv")
    assert metrics["test"]["test/acc"] * (annotations["split"] == "test").sum() == pytest.approx(
        round(metrics["test"]["test/acc"] * (annotations["split"] == "test").sum()), abs=1e-3
    )


def test_tensorboard_event_files_hold_the_scalars(demo_run: Path):
    events = EventAccumulator(str(demo_run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/f1_macro",
        "test/acc",
        "test/f1_macro",
        "test/recall/Horror",
        "test/precision/Romance",
        "test/f1/Action",
    }
    assert expected <= tags, expected - tags
    assert len(events.Scalars("val/acc")) == 8  # one per epoch


def test_eval_from_the_checkpoint_reproduces_the_test_accuracy(demo_run: Path, tmp_path: Path):
    metrics = json.loads((demo_run / "metrics.json").read_text())
    done = run_cli(
        "genre-eval",
        f"ckpt_path={metrics['best_ckpt_path']}",
        f"hydra.run.dir={tmp_path}/eval",
        "trainer=cpu",
        "trainer.enable_progress_bar=false",
        "data.num_workers=0",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["split_file"] == str(demo_run / "annotations.csv")
    for key in ("test/acc", "test/f1_macro", "test/acc_top2", "test/recall/Comedy"):
        assert evaluated["test"][key] == pytest.approx(metrics["test"][key], abs=1e-6), key


def test_predict_one_file_prints_top_k(demo_run: Path, tmp_path: Path):
    metrics = json.loads((demo_run / "metrics.json").read_text())
    poster = pd.read_csv(demo_run / "annotations.csv").iloc[0]["file_path"]
    # In this process: the folder prediction below runs the console script.
    done = run_entry_point(
        "genre-predict",
        f"ckpt_path={metrics['best_ckpt_path']}",
        f"input={poster}",
        "top_k=2",
        f"hydra.run.dir={tmp_path}/p",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    start = lines.index(poster)  # before it only log records (the ONNX export made on first use)
    assert all("][INFO] - " in line for line in lines[:start]), [repr(line) for line in lines[:start]]
    lines = lines[start:]
    assert len(lines) == 3
    # One image is a batch of 1: the ONNX export (made in the background while torch predicted) still
    # passed its parity check.
    digest = hashlib.sha256(Path(metrics["best_ckpt_path"]).read_bytes()).hexdigest()[:16]
    for _ in range(600):
        records = list(Path(os.environ["GENRE_LIGHTNING_CACHE"]).glob(f"onnx/{digest}-*/float32.json"))
        if records:
            break
        time.sleep(0.5)
    (record,) = records
    assert json.loads(record.read_text())["passed"] is True
    probabilities = [float(line.split()[-1]) for line in lines[1:]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001


def test_predict_a_folder_writes_one_row_per_file_and_flags_bad_ones(demo_run: Path, tmp_path: Path):
    metrics = json.loads((demo_run / "metrics.json").read_text())
    folder = tmp_path / "inbox"
    folder.mkdir()
    sources = pd.read_csv(demo_run / "annotations.csv")["file_path"].iloc[:10]
    for i, source in enumerate(sources):
        (folder / f"poster {i}.jpg").write_bytes(Path(source).read_bytes())
    whole = Path(sources.iloc[0]).read_bytes()
    (folder / "broken.jpg").write_bytes(whole[: len(whole) // 2])  # a truncated download
    (folder / "readme.txt").write_text("not an image")
    out_csv = tmp_path / "predictions.csv"
    done = run_cli(
        "genre-predict",
        f"ckpt_path={metrics['best_ckpt_path']}",
        f"input={folder}",
        f"output_csv={out_csv}",
        "num_workers=0",
        f"hydra.run.dir={tmp_path}/p",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    frame = pd.read_csv(out_csv, keep_default_na=False)
    assert list(frame.columns) == [
        "file_path",
        "top1",
        "p_top1",
        "p_Action",
        "p_Comedy",
        "p_Horror",
        "p_Romance",
        "error",
    ]
    assert len(frame) == 11 and sorted(Path(p).name for p in frame["file_path"]) == sorted(
        [f"poster {i}.jpg" for i in range(10)] + ["broken.jpg"]
    )
    bad = frame[frame["file_path"].str.endswith("broken.jpg")].iloc[0]
    assert bad["error"].startswith("corrupt image data") and bad["top1"] == ""
    good = frame[frame["error"] == ""]
    probs = good[["p_Action", "p_Comedy", "p_Horror", "p_Romance"]].astype(float)
    assert all(math.isclose(s, 1.0, abs_tol=1e-5) for s in probs.sum(axis=1))
    assert list(probs.idxmax(axis=1).str.removeprefix("p_")) == list(good["top1"])


def test_train_tests_the_best_checkpoint_even_when_it_is_not_the_last(poster_root: Path, tmp_path: Path):
    """ "Best" = the lowest epoch, so the best checkpoint (epoch 0) and the final weights differ:
    metrics.json's test numbers must be those of the best checkpoint."""
    best_is_first = ["callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min"]
    run = tmp_path / "run"
    short = ["trainer.max_epochs=3", "trainer.limit_train_batches=3", "finetune=none", "logger=csv"]
    train(train_config(poster_root, run, *short, *best_is_first))
    metrics = json.loads((run / "metrics.json").read_text())
    best = Path(metrics["best_ckpt_path"])
    assert best.name.startswith("epoch00") and best.is_file()
    assert metrics["test_ckpt_path"] == str(best)

    def genre_eval(ckpt: Path, name: str) -> tuple[dict, pd.DataFrame]:
        evaluate(compose_config("eval", [*FAST, f"ckpt_path={ckpt}"], tmp_path / name))
        frame = pd.read_csv(tmp_path / name / "test_predictions.csv")
        return json.loads((tmp_path / name / "metrics.json").read_text())["test"], frame

    of_best, best_predictions = genre_eval(best, "best")
    _, last_predictions = genre_eval(run / "checkpoints" / "last.ckpt", "last")
    ours = pd.read_csv(run / "test_predictions.csv")
    for key in ("test/acc", "test/f1_macro", "test/ece"):
        assert metrics["test"][key] == pytest.approx(of_best[key], abs=1e-6), key
    probabilities = [frame.filter(like="p_").to_numpy() for frame in (ours, best_predictions, last_predictions)]
    np.testing.assert_allclose(probabilities[0], probabilities[1], atol=1e-5)
    assert not np.allclose(probabilities[0], probabilities[2], atol=1e-3)  # the last weights would differ
