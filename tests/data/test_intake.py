"""Data intake on a generated fault corpus: every case gets the right outcome, nothing changes."""

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from genre_lightning.cli.prepare_data import summary_tables
from genre_lightning.cli.train import train
from genre_lightning.data import dataset as dataset_module
from genre_lightning.data import scan as scan_module
from genre_lightning.data.dataset import PosterDataset
from genre_lightning.data.demo import GENRES
from genre_lightning.data.imageio import MAX_FILE_BYTES, UnreadableImage, decode_rgb, read_rgb
from genre_lightning.data.intake import prepare_annotations
from genre_lightning.data.scan import Candidate, verify_all
from genre_lightning.data.settings import IntakeSettings
from genre_lightning.inference.predictor import Predictor
from genre_lightning.utils.csvio import read_csv
from tests.helpers.configs import train_config
from tests.helpers.fault_corpus import build_fault_corpus

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


@pytest.fixture
def corpus(tmp_path: Path):
    return build_fault_corpus(tmp_path / "scraped")


def relative(corpus, path: str) -> str:
    return os.path.relpath(path, corpus.root)


def prepare(corpus, out: Path, **duplicates) -> tuple[dict, list[dict]]:
    csv = prepare_annotations(
        out,
        IntakeSettings(
            GENRES,
            fractions=FRACTIONS,
            root=corpus.root,
            min_image_side=32,
            duplicates=duplicates or None,
        ),
    )
    return json.loads((out / "data_report.json").read_text()), read_csv(csv).to_dict("records")


def test_every_fault_gets_its_exact_outcome(corpus, tmp_path: Path):
    report, rows = prepare(corpus, tmp_path / "run")
    assert {relative(corpus, r["file_path"]) for r in rows} == corpus.kept
    skipped = {relative(corpus, s["path"]): s["reason"].split(":")[0] for s in report["skipped"]}
    assert skipped == corpus.skipped
    ignored = {relative(corpus, s["path"]): s["reason"].split(":")[0] for s in report["ignored"]}
    assert ignored == corpus.ignored
    assert report["unknown_folders"] == ["Drama"]
    assert report["n_found"] == len(corpus.kept) + len(corpus.skipped)
    # Reasons carry their details, e.g. the size of the tiny image and the bomb's dimensions.
    reasons = {relative(corpus, s["path"]): s["reason"] for s in report["skipped"]}
    assert "1x1 px" in reasons["Action/tiny.png"]
    assert "100000" in reasons["Action/bomb.png"]


def test_unusual_images_decode_to_the_right_rgb_picture(corpus):
    for rel, (size, at, rgb) in corpus.checks.items():
        image = read_rgb(corpus.root / rel)
        assert image.mode == "RGB" and image.size == size, rel
        if rgb is not None:
            assert all(abs(a - b) <= 12 for a, b in zip(image.getpixel(at), rgb, strict=True)), (rel, rgb)


def test_duplicates_exact_and_near_are_grouped_and_conflicts_reported(corpus, tmp_path: Path):
    report, rows = prepare(corpus, tmp_path / "run")
    duplicates = report["duplicates"]
    groups = {frozenset(relative(corpus, p) for p in g["paths"]): g for g in duplicates["groups"]}
    exact = groups[frozenset({"Action/action_001.jpg", "Comedy/also_comedy.jpg"})]
    near = groups[frozenset({"Action/action_002.jpg", "Horror/action_copy_resized.jpg"})]
    assert exact["kind"] == "exact" and exact["labels"] == ["Action", "Comedy"] and exact["conflicting"]
    assert near["kind"] == "near" and near["labels"] == ["Action", "Horror"]
    assert duplicates["n_conflicting_groups"] == 2 and duplicates["policy"] == "keep"
    split_of = {relative(corpus, r["file_path"]): r["split"] for r in rows}
    assert split_of["Action/action_001.jpg"] == split_of["Comedy/also_comedy.jpg"]
    assert split_of["Action/action_002.jpg"] == split_of["Horror/action_copy_resized.jpg"]
    in_test = sum(split_of[p] == "test" for g, info in groups.items() if info["conflicting"] for p in g)
    assert duplicates["test_items_with_conflicting_labels"] == in_test


def test_policy_drop_leaves_conflicting_groups_out(corpus, tmp_path: Path):
    report, rows = prepare(corpus, tmp_path / "run", policy="drop")
    kept = {relative(corpus, r["file_path"]) for r in rows}
    dropped = {
        "Action/action_001.jpg",
        "Comedy/also_comedy.jpg",
        "Action/action_002.jpg",
        "Horror/action_copy_resized.jpg",
    }
    assert kept == corpus.kept - dropped
    reasons = {relative(corpus, s["path"]): s["reason"] for s in report["skipped"]}
    assert reasons["Comedy/also_comedy.jpg"] == "duplicate with conflicting labels: Action|Comedy"


def test_policy_multi_genre_merges_each_group_into_one_multi_label_item(corpus, tmp_path: Path):
    report, rows = prepare(corpus, tmp_path / "run", policy="multi_genre")
    by_path = {relative(corpus, r["file_path"]): r for r in rows}
    assert "Comedy/also_comedy.jpg" not in by_path and "Horror/action_copy_resized.jpg" not in by_path
    assert by_path["Action/action_001.jpg"]["labels"] == "Action|Comedy"
    assert by_path["Action/action_002.jpg"]["labels"] == "Action|Horror"
    merged = {relative(corpus, m["path"]): relative(corpus, m["into"]) for m in report["duplicates"]["merged"]}
    assert merged == {
        "Comedy/also_comedy.jpg": "Action/action_001.jpg",
        "Horror/action_copy_resized.jpg": "Action/action_002.jpg",
    }
    # Merged files still count as found: found = kept + skipped + merged, per genre and in all.
    per_class = report["per_class"]
    assert (per_class["Comedy"]["merged"], per_class["Horror"]["merged"], per_class["Action"]["merged"]) == (1, 1, 0)
    for genre, row in per_class.items():
        assert row["found"] == row["kept"] + row["skipped"] + row["merged"], genre
        assert row["found"] == sum(p.startswith(genre + "/") for p in corpus.kept | set(corpus.skipped)), genre
    assert report["n_found"] == len(corpus.kept) + len(corpus.skipped) and report["n_merged"] == 2
    console = Console(record=True, width=200)
    console.print(summary_tables(report)[0])
    cells = [line.replace("┃", " ").replace("│", " ").split() for line in console.export_text().splitlines()]
    header, comedy = (words for words in cells if words[:1] in (["genre"], ["Comedy"]))
    assert header[:5] == ["genre", "found", "kept", "skipped", "merged"]
    comedy_counts = [str(per_class["Comedy"][k]) for k in ("found", "kept", "skipped")]
    assert comedy[:5] == ["Comedy", *comedy_counts, "1"]


def test_bad_policy_is_a_one_line_config_error(corpus, tmp_path: Path):
    with pytest.raises(Exception, match=r"^data.duplicates.policy='dedupe' is not valid: expected one of"):
        prepare(corpus, tmp_path / "run", policy="dedupe")


@pytest.mark.slow
def test_multi_genre_accuracy_counts_any_genre_of_a_merged_group(poster_root: Path, tmp_path: Path):
    root = tmp_path / "posters"
    shutil.copytree(poster_root, root)
    for i in range(12):  # the same poster filed under Action and Comedy
        shutil.copy(root / "Action" / f"action_{i:04d}.jpg", root / "Comedy" / f"also_action_{i}.jpg")
    cfg = train_config(
        poster_root,
        tmp_path / "run",
        f"data.root={root}",
        "data.duplicates.policy=multi_genre",
        "trainer.max_epochs=1",
        "finetune=none",
        "logger=csv",
    )
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    rows = read_csv(tmp_path / "run" / "annotations.csv")
    test_rows = rows[rows["split"] == "test"]
    assert test_rows["labels"].str.contains("|", regex=False).any()  # some merged items are in test
    predictor = Predictor.from_checkpoint(json.loads((tmp_path / "run" / "metrics.json").read_text())["best_ckpt_path"])
    predicted = predictor.predict_files(list(test_rows["file_path"]), progress=False)["top1"]
    any_hit = [p in labels.split("|") for p, labels in zip(predicted, test_rows["labels"], strict=True)]
    exact_hit = [p == label for p, label in zip(predicted, test_rows["label"], strict=True)]
    assert metrics["test/acc_multi_genre"] == pytest.approx(sum(any_hit) / len(any_hit), abs=1e-6)
    assert metrics["test/acc"] == pytest.approx(sum(exact_hit) / len(exact_hit), abs=1e-6)


def test_unreadable_exif_orientation_keeps_the_image_as_stored_and_says_so(corpus, caplog):
    with caplog.at_level(logging.WARNING, logger="genre_lightning.data.imageio"):
        image = read_rgb(corpus.root / "Comedy" / "exif_bad_header.webp")
    assert image.size == (60, 40)  # stored landscape; its (unreadable) orientation said "rotate"
    assert "exif_bad_header.webp: EXIF orientation unreadable (SyntaxError" in caplog.text


def test_an_unforeseen_decoder_exception_is_a_skip_not_a_crash(poster_root: Path, monkeypatch):
    # No file we know of still triggers one (the damaged-EXIF crash is fixed), so a decoder bug
    # is stood in for: the scan's thread pool and a training batch must survive it.
    victim = str(poster_root / "Action" / "action_0003.jpg")

    def buggy(decode):
        def wrapper(data, name="image"):
            if str(name) == victim:
                raise IndexError("tile index out of range")
            return decode(data, name)

        return wrapper

    monkeypatch.setattr(scan_module, "decode_rgb", buggy(scan_module.decode_rgb))
    records, skipped = verify_all([Candidate(victim, "Action"), Candidate(victim[:-6] + "04.jpg", "Action")])
    assert len(records) == 1
    assert [(s.path, s.reason) for s in skipped] == [
        (victim, "unexpected decode error: IndexError: tile index out of range")
    ]
    monkeypatch.setattr(dataset_module, "read_rgb", lambda path: buggy(decode_rgb)(b"", path))
    dataset = PosterDataset([victim], [0], transform=lambda image: image)
    assert dataset[0] == (0, "unexpected decode error: IndexError: tile index out of range")


def test_a_huge_file_is_skipped_before_it_is_read(tmp_path: Path):
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as handle:  # sparse: no disk or memory is really used
        handle.truncate(MAX_FILE_BYTES + 2**20)
    (outcome,) = verify_all([Candidate(str(huge), "Action")])[1]
    assert outcome.reason == f"file too large: {MAX_FILE_BYTES // 2**20 + 1} MiB > {MAX_FILE_BYTES // 2**20} MiB limit"
    with pytest.raises(UnreadableImage, match="^file too large"):
        read_rgb(huge)
