"""The first genre-predict on a new checkpoint predicts with torch at once and exports to ONNX in a
detached process: the export lands in the cache (complete, its parity checked), the next call runs
onnxruntime, concurrent first calls export once without corrupting the entry, a predictor moves to
onnxruntime mid-run once the export is ready, and an export that died is reported by the next call."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genre_lightning.inference.predictor import Predictor
from tests.helpers.cli import run_cli
from tests.helpers.optional import have_onnx_export, require

pytestmark = pytest.mark.slow

CLASSES = ["Action", "Comedy", "Horror", "Romance"]
PROBABILITIES = [f"p_{c}" for c in CLASSES]


@pytest.fixture(autouse=True)
def export_extra() -> None:
    require(have_onnx_export(), "the onnxruntime backend needs onnx extras")


@pytest.fixture()
def checkpoint(tiny_run: Path, tmp_path: Path) -> str:
    """The tiny run's checkpoint, copied so that this test's cache folder starts without its export."""
    best = json.loads((tiny_run / "metrics.json").read_text())["best_ckpt_path"]
    return shutil.copy(best, tmp_path / "model.ckpt")


@pytest.fixture(scope="module")
def posters(poster_root: Path) -> list[str]:
    return sorted(str(p) for p in poster_root.rglob("*.jpg"))[::9]


def wait_for_record(cache: Path, timeout: float = 240) -> tuple[Path, dict]:
    """The cache entry and its float32 record, once the background export has written it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = list(cache.glob("*/float32.json"))
        if records:
            return records[0].parent, json.loads(records[0].read_text())
        time.sleep(0.5)
    raise AssertionError(f"no export in {cache} after {timeout} s: {[str(p) for p in cache.rglob('*')]}")


def predict_one(checkpoint: str, poster: str, cache: Path, cwd: Path) -> subprocess.CompletedProcess:
    done = run_cli("genre-predict", f"ckpt_path={checkpoint}", f"input={poster}", f"cache_dir={cache}", cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def top_k(done: subprocess.CompletedProcess, poster: str) -> list[tuple[str, float]]:
    lines = done.stdout.strip().splitlines()
    lines = lines[lines.index(poster) + 1 :]
    return [(line.split()[1], float(line.split()[2])) for line in lines]


def test_the_first_call_predicts_with_torch_and_the_next_runs_the_export_it_left(
    checkpoint: str, posters: list[str], tmp_path: Path
):
    cache, poster = tmp_path / "cache", posters[0]
    first = predict_one(checkpoint, poster, cache, tmp_path)
    assert "[backend torch, precision 32; the ONNX export runs in the background" in first.stderr
    expected = Predictor.from_checkpoint(checkpoint, backend="torch").predict_files([poster], progress=False)
    ranked = sorted(CLASSES, key=lambda c: -expected[f"p_{c}"].iloc[0])
    assert [genre for genre, _ in top_k(first, poster)] == ranked[:3]

    entry, record = wait_for_record(cache)
    assert record["passed"] and record["background"] and record["max_abs_logit_diff"] < 1e-4
    # What the export predicts is what torch predicts, on posters it never saw.
    on_onnx = Predictor.from_checkpoint(checkpoint, backend="onnxruntime", cache_dir=cache)
    predicted = on_onnx.predict_files(posters, progress=False)
    reference = Predictor.from_checkpoint(checkpoint, backend="torch").predict_files(posters, progress=False)
    assert on_onnx.backend == "onnxruntime" and list(predicted["top1"]) == list(reference["top1"])
    assert np.abs(predicted[PROBABILITIES].to_numpy() - reference[PROBABILITIES].to_numpy()).max() < 1e-4
    for _ in range(100):  # the export process removes its state file as its last step
        if not (entry / "background.json").exists():
            break
        time.sleep(0.1)
    assert sorted(p.name for p in entry.iterdir()) == [".lock", "export.log", "float32.json", "model.onnx"]

    second = predict_one(checkpoint, poster, cache, tmp_path)
    assert "[backend onnxruntime, precision 32]" in second.stderr
    assert [genre for genre, _ in top_k(second, poster)] == ranked[:3]
    assert np.allclose([p for _, p in top_k(second, poster)], [p for _, p in top_k(first, poster)], atol=1e-3)


def test_concurrent_first_calls_export_once_and_leave_a_whole_entry(
    checkpoint: str, posters: list[str], tmp_path: Path
):
    cache = tmp_path / "cache"
    executable = Path(sys.executable).parent / "genre-predict"
    processes = [
        subprocess.Popen(
            [str(executable), f"ckpt_path={checkpoint}", f"input={posters[i]}", f"cache_dir={cache}"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    started = sum("Exporting the checkpoint to ONNX in the background" in out for out, _ in outputs)
    assert started == 1  # the others found the entry locked by that export (or its record written)
    entry, record = wait_for_record(cache)
    assert record["passed"]
    assert [p.name for p in cache.iterdir()] == [entry.name]
    assert not [p.name for p in entry.iterdir() if p.name.endswith(".tmp")]
    again = Predictor.from_checkpoint(checkpoint, cache_dir=cache)
    frame = again.predict_files(posters, progress=False)
    reference = Predictor.from_checkpoint(checkpoint, backend="torch").predict_files(posters, progress=False)
    assert again.backend == "onnxruntime" and list(frame["top1"]) == list(reference["top1"])


def test_a_predictor_moves_to_onnxruntime_once_the_export_is_ready(checkpoint: str, posters: list[str], tmp_path: Path):
    cache = tmp_path / "cache"
    predictor = Predictor.from_checkpoint(checkpoint, cache_dir=cache)
    reference = Predictor.from_checkpoint(checkpoint, backend="torch").predict_files(posters, progress=False)
    before = predictor.predict_files(posters, batch_size=4, progress=False)
    assert predictor.backend == "torch"
    pd.testing.assert_frame_equal(before, reference)  # torch: the same numbers exactly
    wait_for_record(cache)
    time.sleep(1.1)  # it looks for the export at most once a second
    after = predictor.predict_files(posters, batch_size=4, progress=False)
    assert predictor.backend == "onnxruntime"
    assert predictor.backend_note == f"torch for the first {len(posters)} images, while the ONNX export ran"
    assert list(after["top1"]) == list(reference["top1"])
    assert np.abs(after[PROBABILITIES].to_numpy() - reference[PROBABILITIES].to_numpy()).max() < 1e-4


def test_an_export_that_died_is_reported_by_the_next_call_and_made_again(
    checkpoint: str, posters: list[str], tmp_path: Path
):
    cache, poster = tmp_path / "cache", posters[0]
    # The first call starts the export and does not wait for it; the export is killed as soon as its
    # state file names it (as the out-of-memory killer would), while it still imports torch. Killing
    # it after the call returned would race it: on a loaded machine a tiny model's export can finish
    # before the call does.
    executable = Path(sys.executable).parent / "genre-predict"
    first = subprocess.Popen(
        [str(executable), f"ckpt_path={checkpoint}", f"input={poster}", f"cache_dir={cache}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while not (states := list(cache.glob("*/background.json"))) and time.monotonic() < deadline:
        assert first.poll() is None, first.communicate()[1][-3000:]  # it ended without starting an export
        time.sleep(0.01)
    os.kill(json.loads(states[0].read_text())["pid"], signal.SIGKILL)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    time.sleep(0.5)
    assert not list(cache.glob("*/float32.json"))  # killed before it finished (a tiny model takes seconds)
    second = predict_one(checkpoint, poster, cache, tmp_path)
    said = second.stdout + second.stderr  # log records go to the console (stdout) and the run's log
    assert "the background ONNX export started" in said and "stopped without a result" in said
    assert "exporting again in the background" in said
    assert "[backend torch, precision 32; the ONNX export runs in the background" in second.stderr
    _, record = wait_for_record(cache)
    assert record["passed"]
