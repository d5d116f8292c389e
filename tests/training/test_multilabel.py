"""data.task=multilabel: labels from a CSV or from copies in several genre folders, thresholds tuned
on val and applied at test, the metrics, prediction and export, and 2-process DDP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score
from timm.data import Mixup

from genre_lightning.data.annotations import read_split_file
from genre_lightning.data.demo import GENRES, draw_poster, ensure_demo_posters
from genre_lightning.data.intake import make_annotations, prepare_annotations
from genre_lightning.data.settings import IntakeSettings
from genre_lightning.inference.predictor import Predictor
from genre_lightning.training.metrics import at_thresholds
from genre_lightning.training.tasks import mix_multi_hot, tune_thresholds
from genre_lightning.utils.csvio import read_csv
from genre_lightning.utils.errors import ConfigError
from tests.helpers.cli import run_cli, run_entry_point
from tests.helpers.configs import FAST
from tests.helpers.rank_weights import OVERRIDE, RANK_ENV, assert_ranks_identical
from tests.helpers.recompute import multilabel_metrics

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
CLASSES = list(GENRES)
TEST_METRICS = ("acc", "map", "f1_micro", "f1_macro", "subset_acc", "hamming", *(f"ap/{c}" for c in CLASSES))


def write_labelled_posters(folder: Path, label_sets: list[list[str]]) -> Path:
    """Real JPEGs (the first genre's look) and a labels.csv naming each one's genres, paths relative."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    rows = []
    for i, genres in enumerate(label_sets):
        name = f"poster_{i:03d}.jpg"
        draw_poster(genres[0], rng, (40, 60), genres[1] if len(genres) > 1 else None).save(folder / name)
        rows.append({"file_path": name, "labels": "|".join(genres)})
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)
    return folder / "labels.csv"


def genre_counts(frame: pd.DataFrame, split: str) -> dict[str, int]:
    genres = frame.loc[frame["split"] == split, "labels"].str.split("|").explode()
    return {c: int((genres == c).sum()) for c in CLASSES}


def test_the_csv_labels_column_round_trips_and_the_split_is_stratified_by_genre(tmp_path: Path):
    rng = np.random.default_rng(0)
    label_sets = []
    for i in range(120):
        first = CLASSES[i % 4]
        if i % 3 == 0:  # a third carry a second genre, in varying (not class) order
            label_sets.append([str(rng.choice([c for c in CLASSES if c != first])), first])
        else:
            label_sets.append([first])
    csv = write_labelled_posters(tmp_path / "posters", label_sets)

    out = prepare_annotations(
        tmp_path / "run", IntakeSettings(CLASSES, fractions=FRACTIONS, annotations=csv, task="multilabel")
    )
    frame = read_split_file(out, CLASSES)
    by_name = {Path(p).name: set(s.split("|")) for p, s in zip(frame["file_path"], frame["labels"], strict=True)}
    assert by_name == {f"poster_{i:03d}.jpg": set(s) for i, s in enumerate(label_sets)}
    # Written in data.classes order, and the primary label is one of the genres.
    assert all(s.split("|") == sorted(s.split("|"), key=CLASSES.index) for s in frame["labels"])
    assert all(label in s.split("|") for label, s in zip(frame["label"], frame["labels"], strict=True))
    # The report counts every genre of every item, per split, as the CSV does; each near its fraction.
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["split"]["task"] == "multilabel"
    totals = genre_counts(frame.assign(split="all"), "all")
    for split, fraction in FRACTIONS.items():
        assert report["split"]["counts"][split] == genre_counts(frame, split)
        for genre in CLASSES:
            assert abs(report["split"]["counts"][split][genre] - fraction * totals[genre]) <= 2, (split, genre)
    # Reused as a split file: the same rows.
    again = prepare_annotations(
        tmp_path / "again",
        IntakeSettings(CLASSES, fractions=FRACTIONS, split_seed=5, split_file=out, task="multilabel"),
    )
    pd.testing.assert_frame_equal(read_csv(again), read_csv(out))


def test_a_genre_name_outside_data_classes_is_one_line_naming_the_row(tmp_path: Path):
    csv = write_labelled_posters(tmp_path / "posters", [["Action"], ["Comedy", "Horror"], ["Action"]])
    frame = pd.read_csv(csv)
    frame.loc[1, "labels"] = "Comedy|Scifi"
    frame.to_csv(csv, index=False)
    done = run_entry_point("genre-train", *FAST, f"data.annotations={csv}", "data.task=multilabel", cwd=tmp_path)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "labels.csv row 3: 'Comedy|Scifi'" in line and "unknown: ['Scifi']" in line, line
    assert "data.annotations" in line


def test_copies_in_several_genre_folders_become_one_item_with_every_genre(tmp_path: Path):
    root = ensure_demo_posters(tmp_path / "posters", per_class=6, size=(40, 60), seed=1, two_genre=2)
    frame, report = make_annotations(IntakeSettings(CLASSES, fractions=FRACTIONS, root=root, task="multilabel"))
    multi = frame[frame["labels"].str.contains("|", regex=False)]
    # 4 genres x 2 two-genre posters, each filed twice: 8 items, 8 copies merged away.
    assert len(multi) == 8 and report["n_merged"] == 8
    for path, labels in zip(multi["file_path"], multi["labels"], strict=True):
        first, second = Path(path).stem.split("_")[:2]  # drawn as <genre>_<second genre>_<n>.jpg
        assert set(labels.split("|")) == {first.capitalize(), second.capitalize()}
    assert len(frame) == 4 * 6 + 8
    with pytest.raises(ConfigError, match=r"data.duplicates.policy='drop'"):
        make_annotations(
            IntakeSettings(CLASSES, fractions=FRACTIONS, root=root, duplicates={"policy": "drop"}, task="multilabel")
        )


def test_thresholds_tuned_on_a_precision_recall_curve_maximise_f1():
    from torchmetrics.functional.classification import multilabel_precision_recall_curve

    generator = torch.Generator().manual_seed(0)
    targets = (torch.rand(200, 4, generator=generator) < 0.3).long()
    probabilities = (0.35 * targets + 0.65 * torch.rand(200, 4, generator=generator)).clamp(0, 1)
    tuned = tune_thresholds(*multilabel_precision_recall_curve(probabilities, targets, num_labels=4))
    for genre in range(4):
        truth, scores = targets[:, genre].numpy(), probabilities[:, genre].numpy()
        best = max(f1_score(truth, scores >= s, zero_division=0) for s in np.unique(scores))
        assert f1_score(truth, scores > float(tuned[genre]), zero_division=0) == pytest.approx(best)
    # The metrics' input: above 0.5 exactly where a probability is above its genre's threshold.
    probabilities[:5] = tuned  # ties: equal to the threshold is not above it
    assert torch.equal(at_thresholds(probabilities, tuned) > 0.5, probabilities > tuned)


def test_mixup_mixes_multi_hot_targets_with_the_images_own_weights():
    mixup = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, prob=1.0, mode="elem", label_smoothing=0.0, num_classes=4)
    images = torch.rand(6, 3, 8, 8)
    targets = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 1, 0, 1], [1, 0, 1, 0]]).float()
    mixed_images, mixed = mix_multi_hot(mixup, images.clone(), targets)
    for i in range(6):
        j = 5 - i  # timm pairs image i with image n-1-i
        lam = (mixed[i] - targets[j]) / (targets[i] - targets[j]).where(targets[i] != targets[j], torch.tensor(1.0))
        lam = lam[targets[i] != targets[j]]
        assert float(lam.max() - lam.min()) < 1e-6  # one weight for every genre of the pair
        torch.testing.assert_close(mixed_images[i], lam[0] * images[i] + (1 - lam[0]) * images[j])


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """genre-train on a generated multi-label demo (posters with cues of two genres), from a folder
    outside the repository (in this process: the DDP test below starts the console script)."""
    cwd = tmp_path_factory.mktemp("multilabel")
    done = run_entry_point(
        "genre-train",
        "experiment=demo_multilabel",
        "data.demo.per_class=40",
        "data.demo.two_genre=16",
        "data.demo.size=[64,96]",
        "model.data_config.input_size=[3,64,64]",
        "trainer.max_epochs=6",
        "model.pos_weight=true",
        "print_config=false",
        "hydra.run.dir=run",
        cwd=cwd,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return cwd / "run"


def checkpoint_thresholds(run: Path) -> tuple[str, torch.Tensor]:
    ckpt = json.loads((run / "metrics.json").read_text())["test_ckpt_path"]
    return ckpt, torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]["task.tuned_thresholds"]


@pytest.mark.slow
def test_the_multilabel_demo_learns_well_above_chance(multilabel_run: Path):
    test = json.loads((multilabel_run / "metrics.json").read_text())["test"]
    frame = read_csv(multilabel_run / "annotations.csv")
    counts = genre_counts(frame, "test")
    chance_map = np.mean([n / int((frame["split"] == "test").sum()) for n in counts.values()])
    assert test["test/map"] > chance_map + 0.25, (test["test/map"], chance_map)
    assert test["test/acc"] > 0.5  # top-1 any-true genre (chance about 0.33)
    # Every test metric, recomputed from the per-image probabilities, the split's genres and the
    # checkpoint's thresholds.
    expected = multilabel_metrics(multilabel_run, checkpoint_thresholds(multilabel_run)[1].numpy())
    for name in TEST_METRICS:
        assert test[f"test/{name}"] == pytest.approx(expected[f"test/{name}"], abs=1e-5), name
    report = json.loads((multilabel_run / "data_report.json").read_text())
    assert report["split"]["counts"]["test"] == counts
    assert {"cooccurrence.png", "precision_recall.png", "mistakes.png"} <= {
        p.name for p in (multilabel_run / "figures").iterdir()
    }


@pytest.mark.slow
def test_thresholds_tuned_on_val_are_the_ones_applied_at_test(multilabel_run: Path):
    _, thresholds = checkpoint_thresholds(multilabel_run)
    assert not torch.allclose(thresholds, torch.full_like(thresholds, 0.5))  # tuned, not the default
    predictions = read_csv(multilabel_run / "test_predictions.csv")
    probabilities = torch.tensor(predictions[[f"p_{c}" for c in CLASSES]].astype(float).to_numpy())
    chosen = probabilities > thresholds.double()
    expected = ["|".join(c for c, on in zip(CLASSES, row, strict=True) if on) for row in chosen.tolist()]
    assert list(predictions["predicted"]) == expected
    truth = np.array([[c in s.split("|") for c in CLASSES] for s in predictions["labels"]])
    test = json.loads((multilabel_run / "metrics.json").read_text())["test"]
    assert test["test/f1_micro"] == pytest.approx(f1_score(truth, chosen.numpy(), average="micro"), abs=1e-5)
    assert test["test/f1_macro"] == pytest.approx(f1_score(truth, chosen.numpy(), average="macro"), abs=1e-5)
    cooccurrence = pd.read_csv(multilabel_run / "cooccurrence.csv", index_col=0)
    np.testing.assert_array_equal(cooccurrence[CLASSES].to_numpy(), truth.T.astype(int) @ chosen.numpy().astype(int))


@pytest.mark.slow
def test_eval_predict_and_export_use_the_checkpoints_thresholds_or_the_override(multilabel_run: Path, tmp_path: Path):
    ckpt, thresholds = checkpoint_thresholds(multilabel_run)
    trained = read_csv(multilabel_run / "test_predictions.csv")
    # genre-eval with one global threshold: F1 as sklearn computes it at 0.5 on the same probabilities.
    done = run_entry_point(
        "genre-eval", *FAST, f"ckpt_path={ckpt}", "threshold=0.5", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]
    truth = np.array([[c in s.split("|") for c in CLASSES] for s in trained["labels"]])
    at_half = trained[[f"p_{c}" for c in CLASSES]].astype(float).to_numpy() > 0.5
    assert evaluated["test/f1_micro"] == pytest.approx(f1_score(truth, at_half, average="micro"), abs=1e-4)
    # genre-predict on a folder: the predicted genres of the test run; the Python API says the same.
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i, path in enumerate(trained["file_path"][:8]):
        (inbox / f"{i}.jpg").write_bytes(Path(path).read_bytes())
    done = run_entry_point("genre-predict", f"ckpt_path={ckpt}", f"input={inbox}", "output_csv=p.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    predicted = read_csv(tmp_path / "p.csv").set_index("file_path")
    for i in range(8):
        assert predicted.loc[str(inbox / f"{i}.jpg"), "predicted"] == trained["predicted"][i]
    (first,) = Predictor.from_checkpoint(ckpt).predict([inbox / "0.jpg"])
    assert first.genres == [c for c in CLASSES if first.probabilities[c] > float(thresholds[CLASSES.index(c)])]
    done = run_entry_point("genre-predict", f"ckpt_path={ckpt}", f"input={inbox / '0.jpg'}", cwd=tmp_path)
    assert f"genres: {', '.join(first.genres) or '(none above its threshold)'}" in done.stdout
    # The export sidecar carries the task and the thresholds.
    artifact = tmp_path / "model.pt"
    done = run_entry_point(
        "genre-export", f"ckpt_path={ckpt}", "format=torchscript", f"output={artifact}", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    sidecar = json.loads(artifact.with_name("model.pt.json").read_text())
    assert sidecar["task"] == "multilabel" and sidecar["thresholds"] == pytest.approx(thresholds.tolist())


@pytest.mark.slow
def test_multilabel_under_two_process_ddp_keeps_the_ranks_and_thresholds_identical(tmp_path: Path):
    root = ensure_demo_posters(tmp_path / "posters", per_class=10, size=(40, 60), seed=2, two_genre=4)
    done = run_cli(
        "genre-train",
        "model=tiny",
        "model.data_config.input_size=[3,32,32]",
        "trainer=ddp_cpu",
        "trainer.max_epochs=2",
        "data.batch_size=8",
        "data.eval_batch_size=4",
        f"data.root={root}",
        "data.task=multilabel",
        "finetune=head_then_all",
        "finetune.milestones=[1]",
        "model.mixup={mixup_alpha:0.4,prob:1.0}",
        "print_config=false",
        "hydra.run.dir=run",
        OVERRIDE,
        cwd=tmp_path,
        env=RANK_ENV,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    assert_ranks_identical(run)  # the whole state dict, thresholds included
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ddp"]["identical"] is True, metrics["ddp"]
    expected = multilabel_metrics(run, checkpoint_thresholds(run)[1].numpy())  # both ranks' images, gathered
    for name in TEST_METRICS:
        assert metrics["test"][f"test/{name}"] == pytest.approx(expected[f"test/{name}"], abs=1e-5), name
    rows = read_csv(tmp_path / "run" / "annotations.csv")
    assert len(read_csv(tmp_path / "run" / "test_predictions.csv")) == int((rows["split"] == "test").sum())
