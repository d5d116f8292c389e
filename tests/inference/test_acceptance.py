"""One set of acceptance rules: every file genre-data refuses (the fault corpus: truncated, empty, not an
image, too small, a decompression bomb, an unsupported mode, unreadable, a pipe, a symlink loop) is
refused with the same reason by genre-predict (an error row), ``Predictor.predict`` (an error) and
genre-serve (a 4xx), and every file it keeps is predicted by all of them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from genre_lightning.data.imageio import DEFAULT_MIN_SIDE
from genre_lightning.data.scan import IMAGE_EXTENSIONS, walk_files
from genre_lightning.inference import Predictor
from genre_lightning.utils.csvio import read_csv
from tests.helpers.cli import run_cli
from tests.helpers.fault_corpus import Corpus, build_fault_corpus
from tests.helpers.server import post_image, start_server

pytestmark = pytest.mark.slow
# Files whose bytes no client could read to send: refused by the file system, not by the decoder.
NOT_UPLOADABLE = ("cannot read file", "not a regular file")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build_fault_corpus(tmp_path_factory.mktemp("acceptance") / "scraped", per_genre=4)


@pytest.fixture(scope="module")
def intake_reasons(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """genre-data on the corpus: each skipped file's reason, by path relative to the corpus."""
    run = tmp_path_factory.mktemp("intake") / "run"
    done = run_cli("genre-data", f"data.root={corpus.root}", f"hydra.run.dir={run}", cwd=run.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((run / "data_report.json").read_text())
    return {os.path.relpath(s["path"], corpus.root): s["reason"] for s in report["skipped"]}


def checkpoint(tiny_run: Path) -> str:
    return json.loads((tiny_run / "metrics.json").read_text())["best_ckpt_path"]


def test_the_intake_refuses_every_bad_file_of_the_corpus(corpus: Corpus, intake_reasons: dict[str, str]):
    refused = {path: reason.split(":")[0] for path, reason in intake_reasons.items() if path in corpus.skipped}
    assert refused == corpus.skipped
    assert intake_reasons["Action/tiny.png"] == f"too small: 1x1 px (data.min_image_side={DEFAULT_MIN_SIDE})"


def test_genre_predict_gives_the_intakes_reason_as_the_error_of_each_refused_file(
    corpus: Corpus, intake_reasons: dict[str, str], tiny_run: Path, tmp_path: Path
):
    out_csv = tmp_path / "predictions.csv"
    done = run_cli(
        "genre-predict", f"ckpt_path={checkpoint(tiny_run)}", f"input={corpus.root}", f"output_csv={out_csv}",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_csv(out_csv)
    errors = {os.path.relpath(p, corpus.root): e for p, e in zip(rows["file_path"], rows["error"], strict=True)}
    assert {path: errors[path] for path in corpus.skipped} == {path: intake_reasons[path] for path in corpus.skipped}
    images = {os.path.relpath(p, corpus.root) for p in walk_files(corpus.root) if p.suffix.lower() in IMAGE_EXTENSIONS}
    # Every other image (the kept ones, and those outside the genre folders) is predicted.
    assert {path for path, error in errors.items() if not error} == images - set(corpus.skipped)


def test_the_predictor_refuses_files_and_pictures_with_the_intakes_reason(
    corpus: Corpus, intake_reasons: dict[str, str], tiny_run: Path
):
    predictor = Predictor.from_checkpoint(checkpoint(tiny_run), backend="torch")
    assert predictor.min_image_side == DEFAULT_MIN_SIDE  # the setting the checkpoint was trained with
    refused = sorted(corpus.skipped)
    kept = sorted(corpus.kept)[:3]
    results = predictor.predict([corpus.root / path for path in refused + kept])
    assert [r.error for r in results[: len(refused)]] == [intake_reasons[path] for path in refused]
    assert all(r.error is None and r.genre for r in results[len(refused) :])
    # A picture in memory is held to the same rule.
    tiny, small_enough = Image.new("RGB", (1, 1)), Image.new("RGB", (DEFAULT_MIN_SIDE, DEFAULT_MIN_SIDE))
    too_small, fine = predictor.predict([tiny, small_enough])
    assert too_small.error == intake_reasons["Action/tiny.png"] and fine.error is None and fine.genre


def test_genre_serve_refuses_every_uploadable_refused_file_with_a_4xx_and_the_intakes_reason(
    corpus: Corpus, intake_reasons: dict[str, str], tiny_run: Path, tmp_path: Path
):
    server = start_server(checkpoint(tiny_run), tmp_path)
    try:
        answers = {}
        for path, kind in sorted(corpus.skipped.items()):
            if kind in NOT_UPLOADABLE:
                continue
            answers[path] = post_image(f"{server.url}/predict", (corpus.root / path).read_bytes(), "image/png")
        status, good = post_image(f"{server.url}/predict", (corpus.root / sorted(corpus.kept)[0]).read_bytes())
    finally:
        assert server.stop() == 0, server.output()[-2000:]
    assert {"Action/tiny.png", "Action/bomb.png", "Action/truncated.jpg", "Action/zero.jpg"} <= set(answers)
    for path, (code, answer) in answers.items():
        assert 400 <= code < 500 and answer == {"error": intake_reasons[path]}, (path, code, answer)
    assert status == 200 and good["genres"]
