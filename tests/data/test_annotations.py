"""Scanning, verification, the data report, and annotations.csv as output and as input."""

import json
import logging
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from genre_lightning.cli.common import compose_config
from genre_lightning.cli.prepare_data import prepare
from genre_lightning.data.annotations import read_split_file, split_digest
from genre_lightning.data.datamodule import PosterDataModule
from genre_lightning.data.demo import GENRES, draw_poster
from genre_lightning.data.intake import prepare_annotations
from genre_lightning.data.settings import IntakeSettings
from genre_lightning.utils.csvio import read_csv, write_csv
from genre_lightning.utils.errors import ConfigError
from tests.helpers.unprivileged import locked, run_python

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


@pytest.fixture
def messy_root(tmp_path: Path, poster_root: Path) -> Path:
    """A copy of the demo posters plus a few broken files and distractions."""
    root = tmp_path / "messy"
    shutil.copytree(poster_root, root)
    good = (root / "Action" / "action_0000.jpg").read_bytes()
    (root / "Action" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "Comedy" / "empty.jpg").write_bytes(b"")
    (root / "Horror" / "page.jpg").write_text("<html><body>404 Not Found</body></html>")
    (root / "Romance" / "notes.txt").write_text("not an image")
    (root / "Drama").mkdir()
    draw_poster("Action", __import__("numpy").random.default_rng(1)).save(root / "Drama" / "x.jpg")
    return root


def test_data_report_lists_each_corrupt_file_with_its_reason(messy_root: Path, tmp_path: Path):
    before = {p: p.read_bytes() for p in messy_root.rglob("*") if p.is_file()}
    out = tmp_path / "run"
    prepare_annotations(out, IntakeSettings(GENRES, fractions=FRACTIONS, root=messy_root))
    report = json.loads((out / "data_report.json").read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"truncated.jpg", "empty.jpg", "page.jpg"}
    assert reasons["truncated.jpg"].startswith("corrupt image data")
    assert reasons["empty.jpg"].startswith("empty file")
    assert reasons["page.jpg"].startswith("not an image")
    assert [Path(s["path"]).name for s in report["ignored"]] == ["notes.txt"]
    assert report["unknown_folders"] == ["Drama"]
    assert report["n_kept"] == 4 * 30
    assert report["per_class"]["Action"] == {
        "found": 31,
        "kept": 30,
        "skipped": 1,
        "skipped_by_reason": {"corrupt image data": 1},
        "merged": 0,
        "ignored": 0,
        "with_genre": 30,
    }
    assert report["per_class"]["Romance"]["ignored"] == 1
    frame = pd.read_csv(out / "annotations.csv")
    assert list(frame.columns[:3]) == ["file_path", "label", "split"]
    assert not frame["file_path"].str.contains("truncated|empty|page|Drama").any()
    # Nothing in the data folder was changed, moved or deleted.
    assert {p: p.read_bytes() for p in messy_root.rglob("*") if p.is_file()} == before


def test_split_file_is_reused_exactly(poster_root: Path, tmp_path: Path):
    first = prepare_annotations(tmp_path / "a", IntakeSettings(GENRES, fractions=FRACTIONS, root=poster_root))
    # Another seed would give another split, but the split file wins.
    second = prepare_annotations(
        tmp_path / "b", IntakeSettings(GENRES, fractions=FRACTIONS, split_seed=99, split_file=first)
    )
    a, b = pd.read_csv(first), pd.read_csv(second)
    assert a[["file_path", "label", "split"]].equals(b[["file_path", "label", "split"]])
    third = prepare_annotations(
        tmp_path / "c", IntakeSettings(GENRES, fractions=FRACTIONS, split_seed=99, root=poster_root)
    )
    assert split_digest(pd.read_csv(third)) != split_digest(a)


def test_annotation_csv_input_with_relative_paths(poster_root: Path, tmp_path: Path):
    rows = [
        (os.path.relpath(poster_root / g / f"{g.lower()}_{i:04d}.jpg", tmp_path), g) for g in GENRES for i in range(10)
    ]
    csv = tmp_path / "list.csv"
    pd.DataFrame(rows, columns=["file_path", "label"]).to_csv(csv, index=False)
    out = prepare_annotations(tmp_path / "run", IntakeSettings(GENRES, fractions=FRACTIONS, annotations=csv))
    frame = pd.read_csv(out)
    assert len(frame) == 40 and all(Path(p).is_absolute() and Path(p).is_file() for p in frame["file_path"])
    assert not frame["file_path"].str.contains(r"/\.\./").any()
    assert frame.groupby("split").size().to_dict() == {"train": 28, "val": 8, "test": 4}


def test_identical_posters_in_two_genres_stay_in_one_split(poster_root: Path, tmp_path: Path):
    root = tmp_path / "dups"
    shutil.copytree(poster_root, root)
    for i in range(8):  # the same poster filed under Action and Comedy
        shutil.copy(root / "Action" / f"action_{i:04d}.jpg", root / "Comedy" / f"dup_{i}.jpg")
    frame = pd.read_csv(prepare_annotations(tmp_path / "run", IntakeSettings(GENRES, fractions=FRACTIONS, root=root)))
    assert frame.groupby("sha256")["split"].nunique().max() == 1
    assert (frame.groupby("sha256").size() == 2).sum() == 8


def test_missing_genre_folder_is_one_clear_line(poster_root: Path, tmp_path: Path):
    root = tmp_path / "three"
    shutil.copytree(poster_root, root, ignore=shutil.ignore_patterns("Romance"))
    with pytest.raises(ConfigError) as err:
        prepare_annotations(tmp_path / "run", IntakeSettings(GENRES, fractions=FRACTIONS, root=root))
    message = str(err.value)
    assert message.startswith("data.classes=") and "missing: ['Romance']" in message and "\n" not in message


def test_empty_genre_folder_stops_with_a_clear_error(poster_root: Path, tmp_path: Path):
    root = tmp_path / "empty_genre"
    shutil.copytree(poster_root, root, ignore=shutil.ignore_patterns("horror_*"))
    with pytest.raises(ConfigError, match=r"none for \['Horror'\]"):
        prepare_annotations(tmp_path / "run", IntakeSettings(GENRES, fractions=FRACTIONS, root=root))


def test_evaluating_the_train_split_does_not_augment(poster_root: Path, tmp_path: Path):
    """genre-eval split=train: the training images through the eval transform, repeatably."""
    dm = PosterDataModule(
        GENRES,
        output_dir=str(tmp_path),
        root=str(poster_root),
        batch_size=8,
        test_split="train",
        augment={"hflip": 0.5, "scale": [0.5, 1.0], "color_jitter": 0.4},
    )
    dm.set_data_config({"input_size": (3, 40, 24), "crop_pct": 1.0, "crop_mode": "squash"})
    dm.prepare_data()
    dm.setup("test")
    first, second = (next(iter(dm.test_dataloader())) for _ in range(2))
    assert first["image"].equal(second["image"])
    assert dm.test_dataloader().dataset.paths == dm.datasets["train"].paths
    assert not dm.datasets["train"][0]["image"].equal(dm.test_dataloader().dataset[0]["image"])  # training augments


def test_datamodule_batches_use_the_backbone_data_config(poster_root: Path, tmp_path: Path):
    dm = PosterDataModule(
        GENRES,
        output_dir=str(tmp_path),
        root=str(poster_root),
        batch_size=8,
        augment={"hflip": 0.5, "scale": [0.5, 1.0]},
    )
    dm.set_data_config(
        {
            "input_size": (3, 40, 24),
            "interpolation": "bilinear",
            "mean": (0.5,) * 3,
            "std": (0.25,) * 3,
            "crop_pct": 1.0,
            "crop_mode": "squash",
        }
    )
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 40, 24)
    assert batch["target"].dtype.is_floating_point is False and batch["failed"] == []
    # mean 0.5, std 0.25: pixel values map into [-2, 2], not the [0, 1] of an unnormalised tensor.
    assert batch["image"].min() < 0 and batch["image"].max() <= 2.0001
    val_a = next(iter(dm.val_dataloader()))["image"]
    val_b = next(iter(dm.val_dataloader()))["image"]
    assert val_a.equal(val_b)  # eval does not augment
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) + len(dm.datasets["test"]) == 120


def test_dataset_turns_a_file_that_breaks_after_the_scan_into_a_counted_skip(poster_root, tmp_path):
    dm = PosterDataModule(GENRES, output_dir=str(tmp_path), root=str(poster_root), batch_size=200)
    dm.set_data_config({"input_size": (3, 16, 16)})
    dm.prepare_data()
    dm.setup("fit")
    victim = tmp_path / "vanishing.jpg"
    Image.new("RGB", (8, 8)).save(victim)
    dm.datasets["train"].paths[0] = str(victim)
    victim.unlink()
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["failed"]) == 1 and batch["failed"][0][1].startswith("cannot read file")
    assert batch["image"].shape[0] == len(dm.datasets["train"]) - 1


def test_a_relative_data_root_writes_absolute_paths(poster_root: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(poster_root.parent)
    out = prepare_annotations(tmp_path / "run", IntakeSettings(GENRES, fractions=FRACTIONS, root=poster_root.name))
    frame = read_csv(out)
    assert all(os.path.isabs(p) for p in frame["file_path"])
    monkeypatch.chdir(tmp_path)  # genre-eval, a resume or data.split_file from another folder
    again = read_split_file(out, GENRES)
    assert list(again["file_path"]) == list(frame["file_path"])
    assert all(Path(p).is_file() for p in again["file_path"])


def test_split_file_paths_are_relative_to_its_own_folder(poster_root: Path, tmp_path: Path, monkeypatch):
    first = read_csv(prepare_annotations(tmp_path / "a", IntakeSettings(GENRES, fractions=FRACTIONS, root=poster_root)))
    moved = first.copy()
    # Half the rows relative to the CSV's folder, half absolute (kept exactly as written).
    moved.loc[::2, "file_path"] = [os.path.relpath(p, tmp_path / "lists") for p in first["file_path"][::2]]
    (tmp_path / "lists").mkdir()
    write_csv(moved, tmp_path / "lists" / "split.csv")
    monkeypatch.chdir(poster_root)  # a working directory the relative paths do not start from
    frame = read_split_file(tmp_path / "lists" / "split.csv", GENRES)
    assert list(frame["file_path"]) == list(first["file_path"])
    assert split_digest(frame) == split_digest(first)


def test_an_unreadable_sub_folder_is_reported_not_skipped_silently(poster_root: Path, tmp_path: Path):
    root = tmp_path / "posters"
    shutil.copytree(poster_root, root)
    (root / "Horror" / "locked").mkdir()
    Image.new("RGB", (48, 72)).save(root / "Horror" / "locked" / "inside.jpg")
    code = (
        "import json, sys\n"
        "from genre_lightning.data.intake import prepare_annotations\n"
        "from genre_lightning.data.settings import IntakeSettings\n"
        "settings = IntakeSettings(json.loads(sys.argv[2]), fractions=json.loads(sys.argv[3]), root=sys.argv[4])\n"
        "prepare_annotations(sys.argv[1], settings)\n"
    )
    with locked(root / "Horror" / "locked"):
        done = run_python(
            code, str(tmp_path / "run"), json.dumps(GENRES), json.dumps(FRACTIONS), str(root), cwd=tmp_path
        )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["skipped"] == [
        {"path": str(root / "Horror" / "locked"), "label": "Horror", "reason": "cannot read folder: Permission denied"}
    ]
    assert report["per_class"]["Horror"]["skipped_by_reason"] == {"cannot read folder": 1}


def test_images_directly_in_data_root_are_listed_as_ignored(poster_root: Path, tmp_path: Path):
    root = tmp_path / "posters"
    shutil.copytree(poster_root, root)
    shutil.copy(root / "Action" / "action_0000.jpg", root / "loose.JPG")
    (root / "README.txt").write_text("not an image: not reported")
    prepare_annotations(tmp_path / "run", IntakeSettings(GENRES, fractions=FRACTIONS, root=root))
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert [(s["path"], s["label"], s["reason"].split(":")[0]) for s in report["ignored"]] == [
        (str(root / "loose.JPG"), None, "not inside a genre folder")
    ]
    assert report["n_ignored"] == 1 and report["n_outside_genre_folders"] == 1


def test_annotation_csv_input_with_a_file_name_that_is_not_utf8(poster_root: Path, tmp_path: Path):
    name = os.fsencode(tmp_path) + b"/caf\xe9.jpg"  # Latin-1: not valid UTF-8
    with open(name, "wb") as handle:
        handle.write((poster_root / "Action" / "action_0000.jpg").read_bytes())
    rows = [f"{poster_root / g / f'{g.lower()}_{i:04d}.jpg'},{g}".encode() for g in GENRES for i in range(1, 6)]
    (tmp_path / "list.csv").write_bytes(b"\n".join([b"file_path,label", name + b",Action", *rows]) + b"\n")
    out = prepare_annotations(
        tmp_path / "run", IntakeSettings(GENRES, fractions=FRACTIONS, annotations=tmp_path / "list.csv")
    )
    paths = list(read_csv(out)["file_path"])
    assert len(paths) == 21 and os.fsdecode(name) in paths


def test_annotation_csv_without_one_readable_image_names_data_annotations(tmp_path: Path):
    (tmp_path / "broken.jpg").write_bytes(b"<html>404</html>")
    csv = tmp_path / "list.csv"
    csv.write_text("file_path,label\nbroken.jpg,Action\n")
    with pytest.raises(ConfigError, match=r"^data.annotations='.*list.csv' is not valid: expected a CSV that lists"):
        prepare_annotations(tmp_path / "run", IntakeSettings(GENRES, fractions=FRACTIONS, annotations=csv))


def test_training_logs_unknown_folders_and_ignored_files(messy_root: Path, tmp_path: Path, caplog):
    shutil.copy(messy_root / "Action" / "action_0000.jpg", messy_root / "loose.jpg")
    with caplog.at_level(logging.WARNING, logger="genre_lightning.data.data_report"):
        prepare_annotations(tmp_path / "run", IntakeSettings(GENRES, fractions=FRACTIONS, root=messy_root))
    assert "Folders that are not a configured genre (not used): Drama" in caplog.messages
    assert any(m.startswith("Ignored 2 file(s) (1 not inside a genre folder,") for m in caplog.messages)


def test_genre_data_with_a_split_file_verifies_it_and_prints_the_per_genre_table(
    poster_root: Path, tmp_path: Path, capsys
):
    root = tmp_path / "posters"
    shutil.copytree(poster_root, root)
    first = prepare_annotations(tmp_path / "a", IntakeSettings(GENRES, fractions=FRACTIONS, root=root))
    broken = Path(read_csv(first)["file_path"].iloc[0])  # breaks after the split was made
    broken.write_bytes(broken.read_bytes()[:200])
    cfg = compose_config("prepare", [f"data.split_file={first}", "data.min_image_side=1"], tmp_path / "b")
    report = prepare(cfg)
    label = broken.parent.name
    assert report["per_class"][label] == {
        "found": 30,
        "kept": 29,
        "skipped": 1,
        "skipped_by_reason": {"corrupt image data": 1},
        "merged": 0,
        "ignored": 0,
    }
    assert [s["path"] for s in report["skipped"]] == [str(broken)]
    assert read_csv(tmp_path / "b" / "annotations.csv").equals(read_csv(first))  # the split is reused as it is
    printed = capsys.readouterr().out
    assert "Data intake" in printed and "corrupt image data" in printed
