"""Data quality as a user meets it: a 3-fold cross-validation of posters whose genre is their colour, some
drawn as Horror but filed as Comedy (planted label issues), read back by genre-report (label issues,
confused pairs, hardest posters), then trained again with the suspects excluded or relabelled through
data.label_fixes, the files on disk untouched. Every number is recomputed here from the files the runs
wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from genre_lightning.data.annotations import split_digest
from genre_lightning.results.figures import DPI, GRID_CELL, GRID_TITLE
from tests.helpers.cli import run_cli, run_entry_point
from tests.helpers.configs import FAST
from tests.helpers.posters import quadrant_posters

pytestmark = [pytest.mark.slow, pytest.mark.long]  # two 3-fold cross-validation sweeps

CLASSES = ["Action", "Comedy", "Horror", "Romance"]
PLANTED = 3  # Horror posters filed under Comedy
# A logistic regression on the tiny random network's pooled features (one step at LR 0 after the fit):
# the colour of the genre's disc survives the pooling, and a fold takes seconds, not minutes of epochs.
PROBE = [
    "finetune=linear_probe",
    "finetune.head_init=probe",
    "model.optimizer.lr=0",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.num_sanity_val_steps=0",
]


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def sweep(base: Path, name: str, *extra: str) -> Path:
    folder = base / "sweeps" / name
    with open(base / f"{name}.log", "w") as log:  # as in `genre-train -m ... > log`
        done = run_cli(
            "genre-train",
            "-m",
            *FAST,
            f"data.root={base / 'posters'}",
            "data.folds=3",
            "data.fold=0,1,2",
            "data.augment=null",
            *PROBE,
            "logger=csv",
            "artifacts.samples_per_class=1",
            *extra,
            f"hydra.sweep.dir={folder}",
            cwd=base,
            stdout=log,
            timeout=1800,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The posters (3 Horror ones filed under Comedy) and their cross-validation, reported."""
    base = tmp_path_factory.mktemp("label_issues")
    root = base / "posters"
    quadrant_posters(root, per_genre=24, side=64, seed=0)
    for i in range(PLANTED):
        (root / "Horror" / f"horror_{i:03d}.jpg").rename(root / "Comedy" / f"filed_as_comedy_{i}.jpg")
    sweep(base, "as_filed")
    with open(base / "report.log", "w") as log:
        done = run_cli("genre-report", f"sweep_dir={base / 'sweeps' / 'as_filed'}", cwd=base, stdout=log)
    assert done.returncode == 0, done.stderr[-3000:]
    return base


def planted_paths(base: Path) -> set[str]:
    return {str(base / "posters" / "Comedy" / f"filed_as_comedy_{i}.jpg") for i in range(PLANTED)}


def test_the_planted_posters_rank_first_among_the_label_issues(planted: Path):
    folder = planted / "sweeps" / "as_filed"
    issues = read(folder / "label_issues.csv")
    assert set(issues["file_path"].head(PLANTED)) == planted_paths(planted)
    top = issues.head(PLANTED)
    assert set(top["filed"]) == {"Comedy"} and set(top["suggested"]) == {"Horror"}
    assert (top["action"] == "exclude").all() and (top["genre"] == "Horror").all()
    scores = issues["score"].astype(float).to_numpy()
    assert np.all(np.diff(scores) >= 0)  # ranked, most doubtful first
    # The score is cleanlab's self-confidence: the out-of-fold probability of the filed genre.
    oof = read(folder / "oof_predictions.csv").set_index("file_path")
    p_filed = [float(oof.loc[p, f"p_{g}"]) for p, g in zip(issues["file_path"], issues["filed"], strict=True)]
    np.testing.assert_allclose(scores, p_filed, rtol=1e-4, atol=1e-6)
    assert issues["fold"].tolist() == [oof.loc[p, "fold"] for p in issues["file_path"]]
    groups = read(folder / "annotations.csv").set_index("file_path")["group"]
    assert issues["group"].tolist() == [groups[p] for p in issues["file_path"]]

    shown = min(24, len(issues))
    rows, columns = -(-shown // 6), min(6, shown)
    with Image.open(folder / "label_issues.png") as figure:  # one thumbnail per suspect, up to 24
        assert figure.size == (round(columns * GRID_CELL[0] * DPI), round((rows * GRID_CELL[1] + GRID_TITLE) * DPI))
    markdown = (folder / "report.md").read_text()
    assert "the best recipe of this report" not in markdown  # one recipe: "the only recipe"
    assert f"{len(issues)} of {len(oof)} posters" in markdown
    assert "| 1 | filed_as_comedy_" in markdown and (planted / "report.log").read_text().count("label_issues.csv") >= 1


def test_confused_pairs_and_hardest_posters_out_of_fold_and_per_run(planted: Path):
    folder = planted / "sweeps" / "as_filed"
    oof = read(folder / "oof_predictions.csv")
    wrong = oof[oof["label"] != oof["top1"]]
    expected = wrong.groupby(["label", "top1"]).size().sort_values(ascending=False, kind="stable")
    pairs = read(folder / "confused_pairs.csv")
    got = {(t, p): int(n) for t, p, n in zip(pairs["true"], pairs["predicted"], pairs["count"], strict=True)}
    assert got == expected.to_dict()
    assert pairs["count"].astype(int).is_monotonic_decreasing
    assert got[("Comedy", "Horror")] >= PLANTED  # the planted posters are confused that way
    filed = oof["label"].value_counts()
    for row in pairs.itertuples():
        assert float(row.share_of_true) == pytest.approx(int(row.count) / filed[row.true])
    markdown = (folder / "report.md").read_text()
    assert f"| Comedy | Horror | {got[('Comedy', 'Horror')]} |" in markdown
    assert (folder / "hardest.png").is_file()

    for run in sorted(folder.glob("[0-9]")):  # each fold run's own test split, at the end of genre-train
        test = read(run / "test_predictions.csv")
        mistakes = test[test["label"] != test["top1"]].groupby(["label", "top1"]).size().to_dict()
        pairs = read(run / "confused_pairs.csv")
        assert {(t, p): int(n) for t, p, n in zip(pairs["true"], pairs["predicted"], pairs["count"], strict=True)} == (
            mistakes
        )
        assert (run / "figures" / "hardest.png").is_file()


def test_the_label_issue_report_of_a_bare_oof_table_and_of_a_sweep_that_is_not_a_cv(planted: Path, tmp_path: Path):
    shutil.copy(planted / "sweeps" / "as_filed" / "oof_predictions.csv", tmp_path / "oof_predictions.csv")
    done = run_entry_point("genre-report", f"oof_csv={tmp_path / 'oof_predictions.csv'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ours, theirs = read(tmp_path / "label_issues.csv"), read(planted / "sweeps" / "as_filed" / "label_issues.csv")
    assert ours["file_path"].tolist() == theirs["file_path"].tolist()
    assert (tmp_path / "label_issues.png").is_file() and (tmp_path / "data_quality.md").is_file()

    plain = tmp_path / "plain"  # one fold run as a run outside a cross-validation
    shutil.copytree(planted / "sweeps" / "as_filed" / "0", plain / "0", ignore=shutil.ignore_patterns("checkpoints"))
    metrics = json.loads((plain / "0" / "metrics.json").read_text())
    del metrics["cross_validation"]
    (plain / "0" / "metrics.json").write_text(json.dumps(metrics))
    done = run_entry_point("genre-report", f"sweep_dir={plain}", "label_issues=true", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: label_issues=True is not valid: expected false for a sweep that is not a cross-validation (label "
        "issues need out-of-fold predictions: genre-train -m data.folds=5 data.fold=0,1,2,3,4 ..., then "
        "genre-report on that folder)"
    )


def test_bad_label_fixes_stop_in_one_line(planted: Path, tmp_path: Path):
    root = planted / "posters"
    poster = next((root / "Action").glob("*.jpg"))
    cases = {
        "action": ("file_path,action,genre\n{p},drop,\n", "action values among ['exclude', 'relabel'] (row 2: 'drop')"),
        "genre": (
            "file_path,action,genre\n{p},relabel,Western\n",
            "relabel rows whose genre is one genre of ['Action', 'Comedy', 'Horror', 'Romance'] (row 2: 'Western')",
        ),
        "columns": ("file,action\n{p},exclude\n", "a CSV with file_path,action,genre columns (missing ['file_path'])"),
        "absent": (
            "file_path,action,genre\n{p},exclude,\n/elsewhere/x.jpg,exclude,\n",
            f"fixes of posters in the data (1 are not among its {4 * 24}, e.g. '/elsewhere/x.jpg'; data.split_file "
            "must be a split as filed, not a fixed run's annotations.csv)",
        ),
    }
    for name, (text, expected) in cases.items():
        fixes = tmp_path / f"{name}.csv"
        fixes.write_text(text.format(p=poster))
        done = run_entry_point(
            "genre-train", *FAST, f"data.root={root}", f"data.label_fixes={fixes}", f"hydra.run.dir={tmp_path / name}",
            cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 2, name
        assert done.stderr.strip() == f"error: data.label_fixes='{fixes}' is not valid: expected {expected}", name
    done = run_entry_point(
        "genre-train", *FAST, f"data.root={root}", "data.label_fixes_scope=test", f"hydra.run.dir={tmp_path / 'scope'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.stderr.strip() == (
        "error: data.label_fixes_scope='test' is not valid: expected train (fixes change training and validation "
        "only) or all"
    )


def test_relabelled_and_excluded_suspects_train_differently_and_every_poster_is_scored_as_filed(planted: Path):
    base = planted
    issues = read(base / "sweeps" / "as_filed" / "label_issues.csv").head(PLANTED)
    # The documented one-liner's effect: the top suspects, relabelled to the suggested genre.
    fixes = base / "relabel.csv"
    issues.assign(action="relabel").to_csv(fixes, index=False)
    before = snapshot(base / "posters")
    fixed = sweep(base, "relabelled", f"data.label_fixes={fixes}")
    assert snapshot(base / "posters") == before  # not a byte or an mtime changed

    as_filed = base / "sweeps" / "as_filed"
    settings = json.loads((fixed / "split_settings.json").read_text())
    assert settings["label_fixes"]["path"] == str(fixes)
    assert read(fixed / "annotations.csv").equals(read(as_filed / "annotations.csv"))  # the folds as filed
    suspects = set(issues["file_path"])
    digests, relabelled_somewhere = set(), False
    for fold in ("0", "1", "2"):
        theirs, ours = read(as_filed / fold / "annotations.csv"), read(fixed / fold / "annotations.csv")
        test = ours["split"] == "test"
        # The held-out fold is the same posters with the same genres as filed; training sees the new genre.
        assert ours[test].reset_index(drop=True).equals(theirs[theirs["split"] == "test"].reset_index(drop=True))
        trained = ours[~test & ours["file_path"].isin(suspects)]
        assert set(trained["file_path"]) == suspects - set(ours.loc[test, "file_path"]), fold
        assert set(trained["label"]) <= {"Horror"}, fold
        relabelled_somewhere = relabelled_somewhere or len(trained) > 0
        assert split_digest(ours) != split_digest(theirs)
        record = read(fixed / fold / "label_fixes.csv")
        assert set(record["file_path"]) == set(trained["file_path"]) and set(record["filed"]) == {"Comedy"}
        metrics = json.loads((fixed / fold / "metrics.json").read_text())["cross_validation"]
        digests.add(metrics["fold_digest"])
        assert (
            metrics["fold_digest"]
            != json.loads((as_filed / fold / "metrics.json").read_text())["cross_validation"]["fold_digest"]
        )
    assert len(digests) == 1  # one fold assignment (with its fixes) for genre-ensemble
    assert relabelled_somewhere

    both = base / "sweeps"
    done = run_entry_point("genre-report", f"sweep_dir={both}", cwd=base)
    assert done.returncode == 0, done.stderr[-3000:]
    oof = read(both / "oof_predictions.csv")
    by_recipe = {r: f.set_index("file_path").sort_index() for r, f in oof.groupby("recipe")}
    assert len(by_recipe) == 2
    first, second = by_recipe.values()
    assert first.index.equals(second.index) and first["label"].equals(second["label"])  # scored as filed
    assert set(first.loc[list(suspects), "label"]) == {"Comedy"}
    table = pd.read_csv(both / "report.csv")
    assert table["posters"].nunique() == 1 and "d_top1" in table.columns  # paired on the same posters
    relabelled = by_recipe[f"data.label_fixes={fixes}"].loc[list(suspects)]
    assert (relabelled["top1"] == "Horror").all()  # trained as Horror, it still calls them Horror

    # Exclusion from training only: a fold run whose training folds hold a suspect.
    excluded = base / "exclude.csv"
    issues.to_csv(excluded, index=False)  # label_issues.csv as it is: action=exclude
    run = base / "excluded_fold0"
    done = run_entry_point(
        "genre-train", *FAST, f"data.split_file={as_filed / 'annotations.csv'}", "data.folds=3", "data.fold=0",
        f"data.label_fixes={excluded}", *PROBE, "artifacts=none", f"hydra.run.dir={run}", cwd=base,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ours, theirs = read(run / "annotations.csv"), read(as_filed / "0" / "annotations.csv")
    held_out = set(theirs.loc[theirs["split"] == "test", "file_path"])
    assert set(ours["file_path"]) == set(theirs["file_path"]) - (suspects - held_out)
    assert (
        ours[ours["split"] == "test"]
        .reset_index(drop=True)
        .equals(theirs[theirs["split"] == "test"].reset_index(drop=True))
    )
    assert snapshot(base / "posters") == before
