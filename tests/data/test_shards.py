"""Streaming shards: genre-data shards=<dir> writes LitData chunks of the verified split, and
data.shards=<dir> trains and evaluates from them (the image files gone) with the same split and
the same results as from the folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from genre_lightning.data.annotations import read_split_file, split_digest
from genre_lightning.data.demo import GENRES
from genre_lightning.data.shards import SHARDS_FILE
from genre_lightning.utils.csvio import read_csv
from tests.helpers.cli import run_cli, run_entry_point
from tests.helpers.configs import FAST
from tests.helpers.optional import have_module, require
from tests.helpers.posters import copy_posters

pytestmark = pytest.mark.slow

TRAIN = [*FAST, "trainer.max_epochs=2", "trainer.limit_train_batches=3", "logger=csv", "artifacts=none"]


def test_training_from_shards_matches_training_from_the_folders(poster_root: Path, tmp_path: Path):
    require(have_module("litdata"), "litdata is not installed (the shards extra)")
    posters = tmp_path / "posters"
    copy_posters(poster_root, posters)
    (posters / "Comedy" / "broken.jpg").write_bytes(b"not a jpeg")
    shards = tmp_path / "shards"
    with open(tmp_path / "data.log", "w") as stdout:
        done = run_cli(
            "genre-data", f"data.root={posters}", f"shards={shards}", f"hydra.run.dir={tmp_path / 'data'}",
            cwd=tmp_path, stdout=stdout,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    said = (tmp_path / "data.log").read_text()
    assert f"Train from them with data.shards={shards}" in said
    split = read_split_file(tmp_path / "data" / "annotations.csv", GENRES)
    summary = json.loads((shards / SHARDS_FILE).read_text())
    assert {s: v["items"] for s, v in summary["splits"].items()} == split["split"].value_counts().to_dict()
    assert not split["file_path"].str.endswith("broken.jpg").any()  # skipped by the scan, not sharded

    # From the folders, on the same split...
    folders = run_entry_point(
        "genre-train", *TRAIN, f"data.split_file={tmp_path / 'data' / 'annotations.csv'}",
        f"hydra.run.dir={tmp_path / 'from_folders'}", cwd=tmp_path,
    )  # fmt: skip
    assert folders.returncode == 0, folders.stderr[-3000:]
    # ...and from the shards alone: the image files are not there any more.
    shutil.move(posters, tmp_path / "elsewhere")
    from_shards = run_entry_point(
        "genre-train", *TRAIN, f"data.shards={shards}", f"hydra.run.dir={tmp_path / 'from_shards'}", cwd=tmp_path
    )
    assert from_shards.returncode == 0, from_shards.stderr[-3000:]
    frames = [
        read_split_file(tmp_path / r / "annotations.csv", GENRES, check_files=False)
        for r in ("from_folders", "from_shards")
    ]
    assert split_digest(frames[0]) == split_digest(frames[1]) == split_digest(split)
    metrics = [json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("from_folders", "from_shards")]
    # The same bytes, decoded and transformed the same way, in the same order: the same run.
    assert metrics[1]["test"]["test/acc"] == pytest.approx(metrics[0]["test"]["test/acc"], abs=1e-6)
    assert metrics[1]["test"]["test/loss"] == pytest.approx(metrics[0]["test"]["test/loss"], rel=1e-4)
    assert metrics[1]["final_val"]["val/acc"] == pytest.approx(metrics[0]["final_val"]["val/acc"], abs=1e-6)

    # genre-eval of the shards run's checkpoint, from the shards.
    evaluated = run_entry_point(
        "genre-eval", *FAST, f"ckpt_path={metrics[1]['best_ckpt_path']}", f"data.shards={shards}", "artifacts=none",
        "logger=csv", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    tested = json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]
    assert tested["test/acc"] == pytest.approx(metrics[1]["test"]["test/acc"], abs=1e-6)

    # genre-predict from the shards alone: the test split's posters, under the paths they were
    # verified as, with the probabilities that the same files give from a folder.
    ckpt = metrics[1]["best_ckpt_path"]
    predict = ["genre-predict", f"ckpt_path={ckpt}", "backend=torch", f"hydra.run.dir={tmp_path / 'predict'}"]
    from_shards_csv, from_files_csv = tmp_path / "shards.csv", tmp_path / "files.csv"
    done = run_entry_point(*predict, f"input={shards}", "split=test", f"output_csv={from_shards_csv}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    done = run_entry_point(*predict, f"input={tmp_path / 'elsewhere'}", f"output_csv={from_files_csv}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    shard_rows = read_csv(from_shards_csv)
    test_paths = list(split.loc[split["split"] == "test", "file_path"])
    assert list(shard_rows["file_path"]) == test_paths and not shard_rows["error"].any()
    file_rows = read_csv(from_files_csv).set_index("file_path")
    moved = [str(tmp_path / "elsewhere" / Path(p).relative_to(posters)) for p in test_paths]
    columns = [f"p_{genre}" for genre in GENRES]
    assert shard_rows[columns].astype(float).to_numpy() == pytest.approx(
        file_rows.loc[moved, columns].astype(float).to_numpy(), abs=1e-6
    )
    # Continuing into the same CSV with every split: the test posters are skipped, the rest added once.
    more = run_entry_point(*predict, f"input={shards}", f"output_csv={from_shards_csv}", "resume=true", cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    assert f"Wrote {len(split) - len(test_paths)} predictions" in more.stdout
    assert f"{len(test_paths)} files already in it were skipped" in more.stdout
    assert sorted(read_csv(from_shards_csv)["file_path"]) == sorted(split["file_path"])
    # A split the shards do not hold is a one-line error naming the setting.
    wrong = run_entry_point(*predict, f"input={shards}", "split=holdout", cwd=tmp_path)
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines()[-1].startswith("error: split='holdout' is not valid")


def test_shards_are_written_once_into_a_new_folder(poster_root: Path, tmp_path: Path):
    require(have_module("litdata"), "litdata is not installed (the shards extra)")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    done = run_entry_point(
        "genre-data", f"data.root={poster_root}", f"shards={occupied}", f"hydra.run.dir={tmp_path / 'd'}", cwd=tmp_path
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: shards='{occupied}' is not valid: expected a new")
    assert (occupied / "keep.txt").read_text() == "mine"


def test_shards_at_a_file_or_where_no_folder_can_be_made_is_one_line_and_writes_nothing(
    poster_root: Path, tmp_path: Path
):
    """genre-data shards=<an existing file> and shards=<a path under a file>: a one-line error naming
    ``shards``, before the scan (no annotations.csv), the file untouched."""
    existing = tmp_path / "posters.tar"
    existing.write_bytes(b"not a folder")
    for target, expected in (
        (existing, "a new or empty folder, not an existing file"),
        (existing / "shards", "a folder that can be created"),
    ):
        run_dir = tmp_path / f"run-{target.name}"
        done = run_cli(
            "genre-data", f"data.root={poster_root}", f"shards={target}", f"hydra.run.dir={run_dir}", cwd=tmp_path
        )
        assert done.returncode == 2, done.stderr[-2000:]
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"error: shards='{target}' is not valid: expected {expected}")
        assert not (run_dir / "annotations.csv").exists()
    assert existing.read_bytes() == b"not a folder"
