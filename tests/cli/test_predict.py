"""genre-predict on the tiny run's checkpoint: same probabilities as the test run, errors flagged,
the folder streamed into the CSV (walked once), and a stopped run resumed."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import genre_lightning.inference.batch as batch_module
from genre_lightning.cli.predict import predict
from genre_lightning.inference.batch import list_inputs
from genre_lightning.utils.csvio import read_csv
from tests.helpers.cli import run_cli, run_entry_point
from tests.helpers.configs import compose_config
from tests.helpers.unprivileged import locked, run_python

CLASSES = ["Action", "Comedy", "Horror", "Romance"]


def best_checkpoint(run: Path) -> str:
    return json.loads((run / "metrics.json").read_text())["best_ckpt_path"]


def predict_config(run: Path, input_path: Path, out: Path, *overrides: str):
    return compose_config(
        "predict",
        [f"ckpt_path={best_checkpoint(run)}", f"input={input_path}", "num_workers=0", "batch_size=5", *overrides],
        out,
    )


def test_an_unreadable_sub_folder_is_named_in_a_warning(tmp_path: Path):
    inbox = tmp_path / "inbox"
    (inbox / "locked").mkdir(parents=True)
    (inbox / "locked" / "inside.jpg").write_bytes(b"")
    (inbox / "a.jpg").write_bytes(b"")
    code = (
        "import json, logging, sys\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
        "from genre_lightning.inference.batch import list_inputs\n"
        "print(json.dumps(list_inputs(sys.argv[1])))\n"
    )
    with locked(inbox / "locked"):
        done = run_python(code, str(inbox), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == [str(inbox / "a.jpg")]
    assert f"Cannot read folder {inbox / 'locked'} (Permission denied)" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("prefetch", ["true", "false"])
def test_folder_gives_one_row_per_image_with_the_test_runs_probabilities(
    tiny_run: Path, tmp_path: Path, capsys, prefetch: str
):
    tested = pd.read_csv(tiny_run / "test_predictions.csv")
    inbox = tmp_path / "inbox"
    (inbox / "nested").mkdir(parents=True)
    copies = {}
    for i, source in enumerate(tested["file_path"]):
        target = inbox / ("nested" if i % 2 else "") / f"poster {i}.jpg"
        shutil.copyfile(source, target)
        copies[str(target)] = source
    good = Path(tested["file_path"].iloc[0]).read_bytes()
    (inbox / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (inbox / "empty.png").write_bytes(b"")
    (inbox / "notes.txt").write_text("not an image")

    run = predict(predict_config(tiny_run, inbox, tmp_path / "run", f"prefetch={prefetch}"))
    out = pd.read_csv(tmp_path / "run" / "predictions.csv", keep_default_na=False)
    assert list(out.columns) == ["file_path", "top1", "p_top1", *[f"p_{c}" for c in CLASSES], "error"]
    assert len(out) == len(tested) + 2 == run.written  # every image file, readable or not; not the .txt
    assert list(out["file_path"]) == list_inputs(inbox)  # in the folder's sorted order
    errors = out.set_index(out["file_path"].map(lambda p: Path(p).name))["error"]
    assert errors["truncated.jpg"].startswith("corrupt image data") and errors["empty.png"] == "empty file: 0 bytes"
    assert (out.loc[out["error"] == "", "top1"] != "").all() and (out.loc[out["error"] != "", "top1"] == "").all()
    # Batched prediction with the eval transform reproduces the test run's probabilities exactly.
    readable = out[out["error"] == ""].assign(source=lambda f: f["file_path"].map(copies)).set_index("source")
    columns = [f"p_{c}" for c in CLASSES]
    np.testing.assert_allclose(
        readable.loc[tested["file_path"], columns].astype(float).to_numpy(), tested[columns].to_numpy(), atol=1e-5
    )
    assert list(readable.loc[tested["file_path"], "top1"]) == list(tested["top1"])
    printed = capsys.readouterr().out
    assert f"Wrote {len(out)} predictions" in printed and "2 unreadable" in printed and "1 files without" in printed


@pytest.mark.slow
def test_one_file_prints_the_top_k_and_an_unreadable_one_is_a_one_line_error(tiny_run: Path, tmp_path: Path, capsys):
    tested = pd.read_csv(tiny_run / "test_predictions.csv").iloc[0]
    predict(predict_config(tiny_run, Path(tested["file_path"]), tmp_path / "a", "top_k=2"))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == tested["file_path"] and len(lines) == 3
    ranked = sorted(CLASSES, key=lambda c: -tested[f"p_{c}"])
    assert [line.split()[1] for line in lines[1:]] == ranked[:2]
    assert [float(line.split()[2]) for line in lines[1:]] == pytest.approx(
        [tested[f"p_{c}"] for c in ranked[:2]], abs=1e-3
    )

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(SystemExit) as exit_info:
        predict(predict_config(tiny_run, broken, tmp_path / "b"))
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: cannot predict {broken}: ")


@pytest.mark.slow
def test_explain_true_writes_each_images_maps_beside_the_csv_and_leaves_the_folder_alone(
    tiny_run: Path, tmp_path: Path, capsys
):
    from PIL import Image

    from genre_lightning import Predictor

    tested = pd.read_csv(tiny_run / "test_predictions.csv").head(3)
    inbox = tmp_path / "inbox"
    (inbox / "nested").mkdir(parents=True)
    for i, source in enumerate(tested["file_path"]):
        shutil.copyfile(source, inbox / ("nested" if i else "") / f"poster {i}.jpg")
    (inbox / "broken.jpg").write_bytes(b"<html>")
    before = {p: p.stat().st_mtime_ns for p in inbox.rglob("*")}
    predict(predict_config(tiny_run, inbox, tmp_path / "run", "explain=true", "explain_genres=all"))
    maps = sorted(str(p.relative_to(tmp_path / "run" / "explanations")) for p in (tmp_path / "run").rglob("*.png"))
    expected = [f"{name}.cam.{genre}.png" for name in ("nested/poster 1.jpg", "nested/poster 2.jpg", "poster 0.jpg")
                for genre in CLASSES]  # fmt: skip
    assert maps == sorted(expected)  # every genre of every readable image; none for the broken one
    assert {p: p.stat().st_mtime_ns for p in inbox.rglob("*")} == before  # the user's folder: only read
    assert "Wrote 12 gradcam maps to" in capsys.readouterr().out
    (again,) = Predictor.from_checkpoint(best_checkpoint(tiny_run)).explain(inbox / "poster 0.jpg", genres="all")
    written = Image.open(tmp_path / "run" / "explanations" / "poster 0.jpg.cam.Horror.png")
    assert np.array_equal(np.asarray(written), np.asarray(again.overlay("Horror")))


@pytest.mark.slow
def test_a_bad_explain_choice_is_a_one_line_error_before_any_prediction(tiny_run: Path, tmp_path: Path):
    from tests.helpers.cli import run_entry_point

    for override, expected in (
        ("explain_method=lime", "error: explain_method='lime' is not valid: expected one of ['gradcam'"),
        ("explain_genres=some", "error: explain_genres='some' is not valid: expected top or all"),
    ):
        done = run_entry_point(
            "genre-predict", f"ckpt_path={best_checkpoint(tiny_run)}", f"input={tmp_path}", "explain=true", override,
            cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith(expected), done.stderr


@pytest.mark.slow
def test_the_folder_is_walked_once(tiny_run: Path, tmp_path: Path, monkeypatch):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i, source in enumerate(pd.read_csv(tiny_run / "test_predictions.csv")["file_path"][:6]):
        shutil.copyfile(source, inbox / f"{i}.jpg")
    (inbox / "notes.txt").write_text("not an image")
    walks = []
    real_walk = batch_module.walk_files

    def counted_walk(*args, **kwargs):
        walks.append(args[0])
        return real_walk(*args, **kwargs)

    monkeypatch.setattr(batch_module, "walk_files", counted_walk)
    run = predict(predict_config(tiny_run, inbox, tmp_path / "run"))
    assert walks == [inbox] and run.written == 6
    assert len(pd.read_csv(tmp_path / "run" / "predictions.csv")) == 6


@pytest.fixture(scope="module")
def big_inbox(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 posters (the test posters copied over and over) in two sub-folders."""
    inbox = tmp_path_factory.mktemp("big") / "inbox"
    sources = list(pd.read_csv(tiny_run / "test_predictions.csv")["file_path"])
    for i in range(600):
        target = inbox / f"part{i % 2}" / f"{i:04d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sources[i % len(sources)], target)
    return inbox


@pytest.mark.slow
def test_a_killed_run_resumes_and_every_file_is_predicted_once_as_in_one_run(
    tiny_run: Path, big_inbox: Path, tmp_path: Path
):
    """As a user runs it: genre-predict from a folder outside the repo, stdout to a file, killed once
    rows are in the CSV; then the same command with resume=true."""
    output = tmp_path / "predictions.csv"
    command = [
        "genre-predict",
        f"ckpt_path={best_checkpoint(tiny_run)}",
        f"input={big_inbox}",
        f"output_csv={output}",
        "batch_size=1",  # one row at a time: the run is still going when it is killed
        "num_workers=0",
        "hydra.run.dir=run",
    ]
    with open(tmp_path / "first.log", "w") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / command[0]), *command[1:]], cwd=tmp_path, stdout=log, stderr=log
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if output.is_file() and output.read_text().count("\n") > 3:  # the header and a few rows
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
    rows_before = output.read_text().count("\n") - 1
    assert 0 < rows_before < 600, (tmp_path / "first.log").read_text()[-2000:]
    with open(output, "a") as partial:  # a kill in the middle of a write leaves half a row
        partial.write(f"{big_inbox / 'part0' / '0598.jpg'},Hor")

    with open(tmp_path / "second.log", "w") as stdout:
        done = run_cli(*command, "resume=true", cwd=tmp_path, stdout=stdout)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = (tmp_path / "second.log").read_text()
    assert f"Wrote {600 - rows_before} predictions to {output}" in printed
    assert f"{rows_before} files already in it were skipped (resume=true)" in printed

    resumed = read_csv(output)
    predict(predict_config(tiny_run, big_inbox, tmp_path / "whole", f"output_csv={tmp_path / 'whole.csv'}"))
    whole = read_csv(tmp_path / "whole.csv")
    assert list(resumed["file_path"]) == list(whole["file_path"]) == list_inputs(big_inbox)  # each once, in order
    assert list(resumed["top1"]) == list(whole["top1"])
    columns = [f"p_{c}" for c in CLASSES]
    np.testing.assert_allclose(resumed[columns].astype(float), whole[columns].astype(float), atol=1e-6)


@pytest.mark.slow
def test_resume_needs_the_csv_to_continue_and_one_of_this_models_columns(tiny_run: Path, tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copyfile(pd.read_csv(tiny_run / "test_predictions.csv")["file_path"][0], inbox / "a.jpg")
    ckpt = f"ckpt_path={best_checkpoint(tiny_run)}"
    done = run_entry_point("genre-predict", ckpt, f"input={inbox}", "resume=true", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: output_csv=None is not valid: expected the CSV of the run to continue when resume=true"
    )
    other = tmp_path / "other.csv"
    other.write_text("file_path,top1,p_top1,p_Drama,p_Western,error\nx.jpg,Drama,0.9,0.9,0.1,\n")
    done = run_entry_point("genre-predict", ckpt, f"input={inbox}", f"output_csv={other}", "resume=true", cwd=tmp_path)
    assert done.returncode == 2
    (line,) = [x for x in done.stderr.strip().splitlines() if x.startswith("error:")]
    assert line.startswith("error: resume=True is not valid: expected an output_csv that genre-predict wrote")
    assert other.read_text().count("\n") == 2  # the user's file is left as it was
