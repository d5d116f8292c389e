"""Cross-validation as a user runs it: a 3-fold CV sweep of the demo posters (the tiny model), read back
by genre-report (out-of-fold metrics with intervals, paired comparisons), then the two final models it
prints the commands for (the fold ensemble and the refit), predicting through genre-predict and Python.

One folder holds two sweeps that share the fold assignment (the same data settings): the recipe with
two seeds, and a deliberately broken recipe (learning rate 0). Both start from one weights file, as a
pretrained backbone would (the seeds then differ in the order and augmentation of the batches, not in
the starting point). Every number is recomputed here from the files the runs wrote."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import save_file
from scipy.stats import binomtest
from sklearn.metrics import f1_score

from genre_lightning.inference.predictor import Predictor
from tests.helpers.cli import run_cli, run_entry_point
from tests.helpers.configs import FAST, TEST_BACKBONE
from tests.helpers.posters import copy_posters

pytestmark = [pytest.mark.slow, pytest.mark.long]  # a 9-job cross-validation sweep: the long step

CLASSES = ["Action", "Comedy", "Horror", "Romance"]
GOOD = "model.optimizer.lr=0.003 trainer.max_epochs=3"  # as Hydra writes a swept value
BROKEN = "model.optimizer.lr=0 trainer.max_epochs=1"


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"fold": str, "seed": str, "group": str}, keep_default_na=False)


@pytest.fixture(scope="module")
def cv(poster_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cv")
    root = base / "posters"
    copy_posters(poster_root, root)
    for i in range(2):  # copies, one pair filed under two genres: each pair must stay in one fold
        shutil.copy(root / "Action" / f"action_{i:04d}.jpg", root / "Comedy" / f"copy_of_action_{i}.jpg")
        shutil.copy(root / "Horror" / f"horror_{i:04d}.jpg", root / "Horror" / f"again_{i}.jpg")
    torch.manual_seed(0)
    start = base / "start.safetensors"  # the tests' model, randomly initialised once, as a timm weights file
    weights = timm.create_model(TEST_BACKBONE, num_classes=4).state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()}, start)
    common = [
        *FAST,
        f"model.weights={start}",
        f"data.root={root}",
        "data.folds=3",
        "data.fold=0,1,2",
        "data.cv_test_fraction=0.2",
        "data.batch_size=16",
        "finetune=none",
        "logger=csv",
        "artifacts.max_mistakes=4",
        "artifacts.samples_per_class=1",
    ]
    for name, recipe in (("good", [*GOOD.split(), "seed=1,2"]), ("broken", BROKEN.split())):
        with open(base / f"{name}.log", "w") as log:  # stdout to a file, as in `genre-train -m ... > log`
            done = run_cli(
                "genre-train",
                "-m",
                *common,
                *recipe,
                f"hydra.sweep.dir={base}/sweeps/{name}",
                cwd=base,
                stdout=log,
                timeout=1800,
            )
        assert done.returncode == 0, done.stderr[-3000:]
    return base


def fold_assignment(cv: Path) -> pd.DataFrame:
    return read(cv / "sweeps" / "good" / "annotations.csv")


def report(cv: Path, *options: str, user: bool = False) -> str:
    run = run_cli if user else run_entry_point
    if user:
        with open(cv / "report.log", "w") as log:
            done = run("genre-report", f"sweep_dir={cv / 'sweeps'}", *options, cwd=cv, stdout=log)
        out = (cv / "report.log").read_text()
    else:
        done = run("genre-report", f"sweep_dir={cv / 'sweeps'}", *options, cwd=cv)
        out = done.stdout
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_the_report_scores_every_poster_once_out_of_fold_with_intervals(cv: Path):
    out = report(cv, user=True)
    sweeps = cv / "sweeps"
    assert (sweeps / "report.md").read_text() in out
    folds = fold_assignment(cv)
    assert folds.groupby("group")["fold"].nunique().max() == 1  # the copies stayed together
    posters = set(folds.loc[folds["fold"] != "holdout", "file_path"])
    fold_of = dict(zip(folds["file_path"], folds["fold"], strict=True))
    oof = read(sweeps / "oof_predictions.csv")
    assert set(oof["recipe"]) == {GOOD, BROKEN}
    for (_, _), run in oof.groupby(["recipe", "seed"]):
        assert len(run) == len(posters) and set(run["file_path"]) == posters  # every poster exactly once
        assert all(fold_of[p] == f for p, f in zip(run["file_path"], run["fold"], strict=True))
    assert oof.groupby("recipe")["seed"].nunique().to_dict() == {GOOD: 2, BROKEN: 1}

    table = pd.read_csv(sweeps / "report.csv").set_index("recipe")
    good, broken = oof[oof["recipe"] == GOOD], oof[oof["recipe"] == BROKEN]
    runs = [run for _, run in good.groupby("seed")]
    accuracy = np.mean([(run["label"] == run["top1"]).mean() for run in runs])
    f1 = np.mean(
        [f1_score(run["label"], run["top1"], average="macro", labels=CLASSES, zero_division=0) for run in runs]
    )
    row = table.loc[GOOD]
    assert row["top1"] == pytest.approx(accuracy) and row["f1_macro"] == pytest.approx(f1)
    assert row["runs"] == 2 and row["posters"] == len(posters)
    for metric in ("top1", "top2", "f1_macro", "ece", "f1/Horror"):
        assert row[f"{metric}_low"] <= row[metric] <= row[f"{metric}_high"], metric
        assert row[f"{metric}_high"] - row[f"{metric}_low"] > 0.01, metric  # 100-odd posters: not a point
    assert f"`{GOOD}` | 2 | {100 * accuracy:.1f} [" in out

    # The broken recipe against the best, on the same posters: McNemar's test recomputed from the files.
    assert table.index[0] == GOOD

    def right(run: pd.DataFrame) -> pd.Series:
        return (run["label"] == run["top1"]).set_axis(run["file_path"]).sort_index()

    mean_right = pd.concat([right(run) for run in runs], axis=1).mean(axis=1)
    broken_right = right(broken)
    only_broken, only_good = int((broken_right > mean_right).sum()), int((mean_right > broken_right).sum())
    lost = table.loc[BROKEN]
    assert (lost["only_this_right"], lost["only_best_right"]) == (only_broken, only_good)
    assert lost["mcnemar_p"] == pytest.approx(binomtest(only_broken, only_broken + only_good, 0.5).pvalue)
    assert lost["verdict"] == "worse" and lost["d_top1_high"] < 0
    assert lost["d_top1"] == pytest.approx(broken_right.mean() - accuracy)


def test_two_seeds_of_one_recipe_are_not_distinguishable(cv: Path):
    report(cv, "group_seeds=false")
    table = pd.read_csv(cv / "sweeps" / "report.csv")
    verdicts = dict(zip(table["recipe"], table["verdict"].fillna("best"), strict=True))
    per_seed = [f"model.optimizer.lr=0.003 seed={s} trainer.max_epochs=3" for s in (1, 2)]  # keys in name order
    assert sorted(verdicts) == sorted([BROKEN, *per_seed])
    assert verdicts[BROKEN] == "worse"
    seeds = sorted(verdicts[name] for name in per_seed)
    assert seeds == ["best", "not distinguishable"]


def test_a_missing_fold_or_a_poster_in_two_folds_stops_in_one_line(cv: Path, tmp_path: Path):
    copy = tmp_path / "sweeps"
    shutil.copytree(cv / "sweeps", copy, ignore=shutil.ignore_patterns("checkpoints", "csv", "figures"))
    (copy / "broken" / "1" / "metrics.json").unlink()
    done = run_entry_point("genre-report", f"sweep_dir={copy}", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: sweep_dir='{copy}' is not valid: expected every fold of each recipe exactly once: "
        f"`{BROKEN}` has fold(s) 1 missing of 3 (incomplete=skip leaves such runs out; incomplete=common "
        "compares on the folds all runs have)"
    )
    # While a cross-validation still runs: leave the incomplete recipe out, or compare on the shared folds.
    done = run_entry_point("genre-report", f"sweep_dir={copy}", "incomplete=skip", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"Left out (incomplete=skip): `{BROKEN}` has fold(s) 1 missing of 3." in done.stdout
    assert set(read(copy / "oof_predictions.csv")["recipe"]) == {GOOD}
    done = run_entry_point("genre-report", f"sweep_dir={copy}", "incomplete=common", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "every recipe is scored on fold(s) 0, 2 of 3" in done.stdout
    assert "genre-ensemble" not in done.stdout and "once every fold has finished" in done.stdout
    oof = read(copy / "oof_predictions.csv")
    folds = fold_assignment(cv)
    shared = set(folds.loc[folds["fold"].isin(["0", "2"]), "file_path"])
    for _, run in oof.groupby(["recipe", "seed"]):
        assert set(run["fold"]) == {"0", "2"} and set(run["file_path"]) == shared and len(run) == len(shared)
    assert set(oof["recipe"]) == {GOOD, BROKEN}

    shutil.copy(cv / "sweeps" / "broken" / "1" / "metrics.json", copy / "broken" / "1" / "metrics.json")
    first, second = (copy / "broken" / job / "test_predictions.csv" for job in ("0", "2"))
    stray = read(first).iloc[[0]]
    pd.concat([read(second), stray]).to_csv(second, index=False)
    done = run_entry_point("genre-report", f"sweep_dir={copy}", cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert f"{stray['file_path'].iloc[0]} is in the predictions of folds 0, 2 of `{BROKEN}`" in done.stderr


def printed_command(markdown: str, program: str) -> list[str]:
    (line,) = [line.strip() for line in markdown.splitlines() if line.strip().startswith(program + " ")]
    return shlex.split(line)[1:]


def test_the_fold_ensemble_and_the_refit_predict_through_genre_predict_and_python(cv: Path, tmp_path: Path):
    markdown = report(cv)
    final = cv / "sweeps" / "final"
    ensemble_args = printed_command(markdown, "genre-ensemble")
    done = run_entry_point("genre-ensemble", *ensemble_args, f"hydra.run.dir={final}/fold_ensemble", cwd=cv)
    assert done.returncode == 0, done.stderr[-3000:]
    refit_args = printed_command(markdown, "genre-train")
    assert "data.fold=all" in refit_args and any(a.startswith("model.temperature=") for a in refit_args)
    with open(tmp_path / "refit.log", "w") as log:
        done = run_cli("genre-train", *refit_args, f"hydra.run.dir={final}/refit", cwd=cv, stdout=log)
    assert done.returncode == 0, done.stderr[-3000:]

    holdout = fold_assignment(cv)
    holdout = holdout.loc[holdout["fold"] == "holdout", ["file_path", "label"]]
    refit = json.loads((final / "refit" / "metrics.json").read_text())
    assert Path(refit["best_ckpt_path"]).name.startswith("refit-epoch") and refit["best_val"] == {}
    refit_split = read(final / "refit" / "annotations.csv")
    assert set(refit_split.loc[refit_split["split"] == "test", "file_path"]) == set(holdout["file_path"])
    assert set(refit_split["split"]) == {"train", "test"}  # no validation split: every other poster trains

    # The fold ensemble, tested on the fixed test part: its probabilities are the mean of its members'
    # calibrated probabilities, through genre-predict and the Python API alike.
    ensemble = final / "fold_ensemble"
    members = json.loads((ensemble / "metrics.json").read_text())["ensemble_members"]
    assert len(members) == 3
    tested = read(ensemble / "test_predictions.csv").set_index("file_path").loc[holdout["file_path"]]
    files = list(holdout["file_path"])
    mean = np.mean([probabilities(Predictor.from_checkpoint(m), files) for m in members], axis=0)
    ensemble_ckpt = ensemble / "checkpoints" / "ensemble.ckpt"
    np.testing.assert_allclose(tested[[f"p_{c}" for c in CLASSES]].to_numpy(float), mean, atol=1e-5)
    np.testing.assert_allclose(probabilities(Predictor.from_checkpoint(ensemble_ckpt), files), mean, atol=1e-5)

    folder = tmp_path / "holdout"
    folder.mkdir()
    for path in files:
        shutil.copy(path, folder / Path(path).name)
    for checkpoint, name in ((ensemble_ckpt, "ensemble"), (Path(refit["best_ckpt_path"]), "refit")):
        done = run_cli(
            "genre-predict",
            f"ckpt_path={checkpoint}",
            f"input={folder}",
            f"output_csv={tmp_path}/{name}.csv",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        predicted = read(tmp_path / f"{name}.csv").set_index("file_path")
        via_python = probabilities(Predictor.from_checkpoint(checkpoint), [str(folder / Path(p).name) for p in files])
        got = predicted.loc[[str(folder / Path(p).name) for p in files], [f"p_{c}" for c in CLASSES]].to_numpy(float)
        np.testing.assert_allclose(got, via_python, atol=1e-5)

    # A fold run's checkpoint on the fixed test part, which it never saw either.
    member = Path(members[0])
    done = run_entry_point(
        "genre-eval", *FAST, f"ckpt_path={member}", "split=holdout", f"hydra.run.dir={tmp_path}/eval", cwd=cv
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(read(tmp_path / "eval" / "test_predictions.csv")["file_path"]) == set(files)

    # genre-report now also compares the two final models on the fixed test part.
    markdown = report(cv)
    assert f"tested on the fixed test part ({len(holdout)} posters)" in markdown
    final_table = pd.read_csv(cv / "sweeps" / "final_models.csv")
    assert len(final_table) == 2 and final_table["recipe"].str.startswith("ensemble(").sum() == 1


def probabilities(predictor: Predictor, files: list[str]) -> np.ndarray:
    return np.array([[r.probabilities[c] for c in CLASSES] for r in predictor.predict(files)])
