"""backend=onnxruntime predicts what backend=torch predicts: the same top genre and probabilities within
1e-4 on generated posters, with flip TTA and more test-time views (scales, five crops), an ensemble and
multi-label thresholds; the export is made on first use, once per checkpoint content (also when two
predictors start at once), and a failed parity check falls back to torch with one warning line."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import genre_lightning.inference.backends as backends
import genre_lightning.inference.onnx_cache as onnx_cache
from genre_lightning.inference.predictor import Predictor
from genre_lightning.training.ensemble import build_ensemble
from genre_lightning.utils.errors import ConfigError
from tests.helpers.cli import run_entry_point
from tests.helpers.optional import have_onnx_export, require

pytestmark = pytest.mark.slow

CLASSES = ["Action", "Comedy", "Horror", "Romance"]
PROBABILITIES = [f"p_{c}" for c in CLASSES]


@pytest.fixture(autouse=True)
def export_extra() -> None:
    require(have_onnx_export(), "the onnxruntime backend needs onnx extras")


@pytest.fixture(scope="module")
def checkpoint(tiny_run: Path) -> str:
    return json.loads((tiny_run / "metrics.json").read_text())["best_ckpt_path"]


@pytest.fixture(scope="module")
def posters(poster_root: Path) -> list[str]:
    return sorted(str(p) for p in poster_root.rglob("*.jpg"))


def changed_copy(checkpoint: str, target: Path, change) -> Path:
    """The checkpoint re-saved with ``change(saved)`` applied, inside a run folder with its split."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    change(saved)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, target)
    shutil.copyfile(Path(checkpoint).parent.parent / "annotations.csv", target.parent.parent / "annotations.csv")
    return target


def perturbed_head(saved: dict) -> None:
    generator = torch.Generator().manual_seed(0)
    for key in [k for k in saved["state_dict"] if k.startswith("net.fc.")]:
        value = saved["state_dict"][key]
        saved["state_dict"][key] = value + 0.5 * torch.randn(value.shape, generator=generator)


def multilabel_thresholds(checkpoint: str, posters: list[str], target: Path) -> Path:
    """The checkpoint as a multi-label model whose tuned thresholds lie in the widest gap between two
    posters' probabilities in the middle half of each genre's, so the decisions are mixed and not
    knife-edge."""
    sigmoid = Predictor.from_checkpoint(checkpoint, backend="torch")
    logits = torch.cat([sigmoid.logits(b) for b in _batches(sigmoid, posters)])
    values = logits.sigmoid().sort(dim=0).values
    gaps = values[1:] - values[:-1]
    quarter, genres = len(values) // 4, torch.arange(values.shape[1])
    below = quarter + gaps[quarter : len(values) - quarter].argmax(dim=0)  # the poster below each gap
    thresholds = (values[below, genres] + values[below + 1, genres]) / 2
    assert (gaps[below, genres] / 2).min() > 1e-5  # far from any poster's probability

    def to_multilabel(saved: dict) -> None:
        saved["hyper_parameters"]["task"] = "multilabel"
        saved["state_dict"]["task.tuned_thresholds"] = thresholds
        saved["state_dict"]["task.positive_weights"] = torch.ones(len(CLASSES))
        saved["state_dict"].pop("task.temperature", None)  # single-label calibration state

    return changed_copy(checkpoint, target, to_multilabel)


def _batches(predictor: Predictor, paths: list[str]) -> list[torch.Tensor]:
    from genre_lightning.inference.quantize import image_batches

    return image_batches(paths, predictor.eval_transform, batch_size=32)


@pytest.fixture(scope="module")
def variants(checkpoint: str, posters: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """name -> (checkpoint, from_checkpoint options): the tiny run as it is, with flip TTA, as a
    multi-label model with tuned thresholds, and an ensemble of it and a member with another head."""
    folder = tmp_path_factory.mktemp("variants")
    member = changed_copy(checkpoint, folder / "member" / "checkpoints" / "m.ckpt", perturbed_head)
    ensemble = build_ensemble([checkpoint, str(member)], folder / "ensemble" / "checkpoints" / "ensemble.ckpt")
    multilabel = multilabel_thresholds(checkpoint, posters, folder / "multi" / "checkpoints" / "multi.ckpt")
    return {
        "plain": (checkpoint, {}),
        "flip_tta": (checkpoint, {"tta_hflip": True}),
        "views_tta": (checkpoint, {"tta": {"hflip": True, "scales": [1.0, 1.2], "crops": "five"}}),
        "multilabel": (str(multilabel), {}),
        "ensemble": (str(ensemble), {}),
    }


@pytest.mark.parametrize("variant", ["plain", "flip_tta", "views_tta", "multilabel", "ensemble"])
def test_onnxruntime_predicts_what_torch_predicts(variants: dict, posters: list[str], tmp_path: Path, variant: str):
    path, options = variants[variant]
    on_torch = Predictor.from_checkpoint(path, backend="torch", **options)
    on_onnx = Predictor.from_checkpoint(path, backend="onnxruntime", cache_dir=tmp_path, **options)
    expected = on_torch.predict_files(posters, progress=False)
    predicted = on_onnx.predict_files(posters, progress=False)
    assert (on_torch.backend, on_onnx.backend) == ("torch", "onnxruntime")
    assert list(predicted.columns) == list(expected.columns)
    assert list(predicted["top1"]) == list(expected["top1"])
    difference = np.abs(predicted[PROBABILITIES].to_numpy() - expected[PROBABILITIES].to_numpy()).max()
    assert difference < 1e-4, difference
    if variant == "multilabel":  # the task's tuned thresholds decide on both backends
        assert list(predicted["predicted"]) == list(expected["predicted"])
        assert predicted["predicted"].nunique() > 2
    if variant in ("flip_tta", "views_tta"):  # the views are in the exported graph: without them the answers differ
        other = {"tta_hflip": True} if variant == "views_tta" else {}
        plain = Predictor.from_checkpoint(path, backend="torch", **other).predict_files(posters, progress=False)
        assert np.abs(plain[PROBABILITIES].to_numpy() - predicted[PROBABILITIES].to_numpy()).max() > 1e-3
    if variant == "ensemble":  # the mean of its members' probabilities
        members = [Predictor.from_checkpoint(p, backend="torch") for p in (variants["plain"][0], _member(path))]
        mean = sum(m.predict_files(posters, progress=False)[PROBABILITIES].to_numpy() for m in members) / 2
        assert np.abs(mean - predicted[PROBABILITIES].to_numpy()).max() < 1e-4


def _member(ensemble: str) -> str:
    return torch.load(ensemble, map_location="cpu", weights_only=True)["ensemble_members"][1]


def test_the_export_is_made_once_per_checkpoint_content(checkpoint: str, posters: list[str], tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, logger=onnx_cache.__name__)
    first = Predictor.from_checkpoint(checkpoint, backend="onnxruntime", cache_dir=tmp_path)
    first.predict_files(posters[:8], progress=False)
    (entry,) = tmp_path.iterdir()
    assert entry.name.startswith(first.identity["sha256"] + "-")
    record = json.loads((entry / "float32.json").read_text())
    assert record["passed"] and record["max_abs_logit_diff"] < 1e-4 and record["images"] == 8
    # The same bytes under another name: the entry is reused, nothing is exported again.
    copy = tmp_path.parent / "copy" / "checkpoints" / "same.ckpt"
    copy.parent.mkdir(parents=True)
    shutil.copyfile(checkpoint, copy)
    caplog.clear()
    again = Predictor.from_checkpoint(copy, backend="onnxruntime", cache_dir=tmp_path)
    again.predict_files(posters[:8], progress=False)
    assert again.backend == "onnxruntime" and "Exporting" not in caplog.text
    # A changed checkpoint is exported anew, into its own entry.
    changed = changed_copy(checkpoint, tmp_path.parent / "changed" / "checkpoints" / "c.ckpt", perturbed_head)
    other = Predictor.from_checkpoint(changed, backend="onnxruntime", cache_dir=tmp_path)
    other.predict_files(posters[:8], progress=False)
    assert caplog.text.count("Exporting") == 1
    assert {p.name.split("-")[0] for p in tmp_path.iterdir()} == {first.identity["sha256"], other.identity["sha256"]}


def test_two_predictors_starting_at_once_export_once(checkpoint: str, posters: list[str], tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, logger=onnx_cache.__name__)
    predictors = [Predictor.from_checkpoint(checkpoint, backend="onnxruntime", cache_dir=tmp_path) for _ in range(2)]
    start, results = threading.Barrier(2), [None, None]

    def run(i: int) -> None:
        start.wait()
        results[i] = predictors[i].predict_files(posters[:16], progress=False)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert caplog.text.count("Exporting") == 1
    assert [p.backend for p in predictors] == ["onnxruntime", "onnxruntime"]
    pd.testing.assert_frame_equal(results[0], results[1])
    (entry,) = tmp_path.iterdir()
    assert sorted(p.name for p in entry.iterdir()) == [".lock", "float32.json", "model.onnx"]  # no leftovers


def test_a_failed_parity_check_falls_back_to_torch_with_one_warning(
    checkpoint: str, posters: list[str], tmp_path: Path, caplog, monkeypatch
):
    """No real export misses 1e-4 here, so the check runs with a tolerance no export can meet."""
    monkeypatch.setattr(onnx_cache, "PARITY_TOLERANCE", 0.0)
    caplog.set_level(logging.INFO, logger=onnx_cache.__name__)
    expected = Predictor.from_checkpoint(checkpoint, backend="torch").predict_files(posters[:8], progress=False)
    for attempt in range(2):  # the second run reads the recorded failure instead of exporting again
        caplog.clear()
        predictor = Predictor.from_checkpoint(checkpoint, backend="onnxruntime", cache_dir=tmp_path)
        predicted = predictor.predict_files(posters[:8], progress=False)
        assert predictor.backend == "torch"
        pd.testing.assert_frame_equal(predicted, expected)
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
        assert "onnxruntime backend not used" in warnings[0].getMessage()
        assert "predicting with torch" in warnings[0].getMessage()
        assert ("Exporting" in caplog.text) == (attempt == 0)


def test_auto_is_onnxruntime_where_installed_and_torch_where_not(checkpoint: str, tmp_path: Path, monkeypatch):
    auto = Predictor.from_checkpoint(checkpoint, cache_dir=tmp_path, onnx_export="wait")
    assert auto.backend == "auto"  # chosen on the first batch
    images = torch.zeros(2, *auto.data_config["input_size"])
    auto.logits(images)
    assert auto.backend == "onnxruntime"
    with pytest.raises(ConfigError, match="onnx_export='later' is not valid: expected one of"):
        Predictor.from_checkpoint(checkpoint, onnx_export="later")
    monkeypatch.setattr(backends, "have_onnxruntime", lambda: False)  # as in an install without it
    plain = Predictor.from_checkpoint(checkpoint, cache_dir=tmp_path)
    plain.logits(images)
    assert plain.backend == "torch"
    with pytest.raises(ConfigError, match="backend=onnxruntime needs pip install"):
        Predictor.from_checkpoint(checkpoint, backend="onnxruntime")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["backend=tensorrt"], "error: backend='tensorrt' is not valid: expected one of ['auto', 'torch', 'onnx"),
        (["precision=int8", "backend=torch"], "error: precision='int8' is not valid: expected 32 or bf16 with"),
        (["precision=bf16", "backend=onnxruntime"], "error: precision='bf16' is not valid: expected 32 or int8 with"),
        (["precision=fp8"], "error: precision='fp8' is not valid: expected one of ['32', 'bf16', 'int8']"),
    ],
)
def test_impossible_backend_settings_are_one_line_errors(checkpoint: str, tmp_path: Path, overrides, message):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"")
    done = run_entry_point("genre-predict", f"ckpt_path={checkpoint}", f"input={image}", *overrides, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(message), done.stderr[-1000:]


def test_int8_runs_the_quantised_export_calibrated_on_the_training_posters(
    checkpoint: str, posters: list[str], tmp_path: Path
):
    cache = tmp_path / "cache"
    predictor = Predictor.from_checkpoint(checkpoint, precision="int8", cache_dir=cache)
    predicted = predictor.predict_files(posters[:32], progress=False)
    assert (predictor.backend, predictor.precision) == ("onnxruntime", "int8")
    (entry,) = cache.iterdir()
    assert {"model.onnx", "float32.json", "model.int8.onnx", "int8.json"} <= {p.name for p in entry.iterdir()}
    split = pd.read_csv(Path(checkpoint).parent.parent / "annotations.csv")
    assert json.loads((entry / "int8.json").read_text())["calibration_images"] == min(
        128, int((split["split"] == "train").sum())
    )
    expected = Predictor.from_checkpoint(checkpoint, backend="torch").predict_files(posters[:32], progress=False)
    difference = np.abs(predicted[PROBABILITIES].to_numpy() - expected[PROBABILITIES].to_numpy()).max()
    assert 1e-6 < difference < 0.5  # quantised: close to float32, not equal
    # Without its run's split there is nothing to calibrate on: one line, before any work.
    lone = tmp_path / "lone.ckpt"
    shutil.copyfile(checkpoint, lone)
    with pytest.raises(ConfigError, match=r"ckpt_path=.* expected a checkpoint with its run's annotations.csv"):
        Predictor.from_checkpoint(lone, precision="int8")
