"""The cross-validated search as a user runs it (`genre-train -m hydra/sweeper=cv_search ...` and the
hparams_search presets): every trial scored out of fold on one fold assignment, a deliberately bad region
of the space stopped after its first fold, a search killed with SIGKILL continued by the same command, the
winner refitted and confirmed on the fixed test part, and genre-report's numbers recomputed here from the
trials' fold predictions. Bad input is refused in one line before anything trains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.storages.journal import JournalFileBackend

from tests.helpers.cli import run_cli
from tests.helpers.configs import FAST

GOOD_LR, BAD_LR = 0.003, 0.0  # at LR 0 the random initial network never learns: the bad region
TINY = [
    *FAST,
    "data.folds=3",
    "data.cv_test_fraction=0.2",
    "data.batch_size=16",
    "finetune=none",
    "logger=csv",
    "trainer.max_epochs=2",
    "artifacts.max_mistakes=2",
    "artifacts.samples_per_class=1",
    f"model.optimizer.lr={GOOD_LR}",
    "hydra/sweeper=cv_search",
    f'++hydra.sweeper.params={{model.optimizer.lr: "choice({BAD_LR}, {GOOD_LR})", '
    'model.label_smoothing: "interval(0.0, 0.1)"}',
    # Random draws (TPE's start-up phase), seeded: the first trial is in the bad region, the second not.
    "hydra.sweeper.sampler.n_startup_trials=10",
    "hydra.sweeper.sampler.seed=6",
]


def search_command(posters: Path, folder: Path, *extra: str) -> list[str]:
    return ["genre-train", "-m", *TINY, f"data.root={posters}", f"hydra.sweep.dir={folder}", *extra]


def study(folder: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(folder / "study.journal")))
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def nll(folder: Path) -> tuple[pd.Series, float]:
    """A trial's out-of-fold log-loss recomputed from its fold runs' predictions."""
    frame = pd.concat([pd.read_csv(f / "test_predictions.csv") for f in sorted(folder.glob("fold_*"))])
    probability = frame.apply(lambda row: row[f"p_{row['label']}"], axis=1)
    return frame["file_path"], float(-np.log(np.clip(probability, 1e-12, 1)).mean())


@pytest.fixture(scope="module")
def searched(poster_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-trial search, killed with SIGKILL in its second trial, then continued by the same command."""
    base = tmp_path_factory.mktemp("search")
    folder = base / "search"
    command = search_command(poster_root, folder, "hydra.sweeper.n_trials=4")
    executable = Path(sys.executable).parent / command[0]
    with open(base / "first.log", "w") as log:
        first = subprocess.Popen(
            [str(executable), *command[1:]], cwd=base, stdout=log, stderr=log, start_new_session=True
        )
        killed_in = folder / "trial_0001" / "fold_0" / "metrics.json"
        deadline = time.monotonic() + 1200
        while not killed_in.is_file() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert first.poll() is None, (base / "first.log").read_text()[-3000:]
        os.killpg(first.pid, signal.SIGKILL)  # the sweeping process and anything it started
        first.wait()
    before = study(folder)
    (base / "before.json").write_text(
        json.dumps(
            {
                "trials": [[t.number, t.state.name, t.params] for t in before.trials],
                "mtimes": {str(p): p.stat().st_mtime_ns for p in folder.glob("*/fold_*/metrics.json")},
            }
        )
    )
    with open(base / "second.log", "w") as log:
        done = run_cli(*command, cwd=base, stdout=log, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return base


@pytest.mark.slow
@pytest.mark.long
def test_a_killed_search_continues_the_same_study_without_losing_or_repeating_a_trial(searched: Path):
    folder, before = searched / "search", json.loads((searched / "before.json").read_text())
    after = study(folder)
    assert [t.number for t in after.trials] == [0, 1, 2, 3]
    assert all(t.state.is_finished() for t in after.trials)
    # The trial that ran when the sweeper was killed is the same trial (same parameters), resumed.
    running = [number for number, state, _ in before["trials"] if state == "RUNNING"]
    assert running == [1]
    assert after.trials[1].params == before["trials"][1][2]
    # A fold run that had finished was not run again: its metrics.json is the one written before the kill.
    for path, mtime in before["mtimes"].items():
        assert Path(path).stat().st_mtime_ns == mtime, path
    assert "resumed" in (searched / "second.log").read_text()


@pytest.mark.slow
@pytest.mark.long
def test_the_bad_region_is_pruned_and_every_value_is_the_out_of_fold_metric(searched: Path):
    folder = searched / "search"
    trials = study(folder).trials
    bad = [t for t in trials if t.params["model.optimizer.lr"] == BAD_LR]
    good = [t for t in trials if t.params["model.optimizer.lr"] == GOOD_LR]
    assert bad and good, [t.params for t in trials]  # the sampler's seed draws both regions
    for trial in bad:
        assert trial.state.name == "PRUNED"
        assert len(list((folder / f"trial_{trial.number:04d}").glob("fold_*/metrics.json"))) < 3
    for trial in good:
        assert trial.state.name == "COMPLETE"
        posters, value = nll(folder / f"trial_{trial.number:04d}")
        assert trial.value == pytest.approx(value, rel=1e-6)
        # Every poster outside the fixed test part exactly once, on the sweep's fold assignment.
        folds = pd.read_csv(folder / "annotations.csv", dtype={"fold": str})
        assert sorted(posters) == sorted(folds.loc[folds["fold"] != "holdout", "file_path"])


@pytest.mark.slow
@pytest.mark.long
def test_the_report_of_a_search_recomputes_trials_and_confirms_the_winner_on_unseen_posters(searched: Path):
    folder = searched / "search"
    with open(searched / "report.log", "w") as log:
        done = run_cli("genre-report", f"sweep_dir={folder}", cwd=searched, stdout=log)
    assert done.returncode == 0, done.stderr[-3000:]
    out = (searched / "report.log").read_text()
    table = pd.read_csv(folder / "search_trials.csv", dtype={"trial": str})
    completed = table[(table["state"] == "COMPLETE") & (table["folds_run"] == 3)]
    for _, row in completed.iterrows():
        sub = "baseline" if row["trial"] == "baseline" else f"trial_{int(row['trial']):04d}"
        _, value = nll(folder / sub)
        assert row["logloss"] == pytest.approx(value, rel=1e-6)
        assert row["logloss_low"] < row["logloss"] < row["logloss_high"]
    winner = table[table["winner"]].iloc[0]
    assert winner["logloss"] == completed["logloss"].min()
    # Pruning's saving is reported; the figures are Optuna's own.
    assert "stopped early" in out and (folder / "search_history.png").is_file()
    # The confirmation: both refits tested on the fixed test part, posters no fold run predicted.
    holdout = set(pd.read_csv(folder / "annotations.csv", dtype={"fold": str}).query("fold == 'holdout'")["file_path"])
    for name in ("winner", "baseline"):
        tested = pd.read_csv(folder / "confirm" / name / "test_predictions.csv")
        assert set(tested["file_path"]) == holdout
    confirmation = pd.read_csv(folder / "search_confirmation.csv")
    assert len(confirmation) == 2
    for _, row in confirmation.iterrows():
        name = "winner" if row["recipe"].startswith("winner") else "baseline"
        tested = pd.read_csv(folder / "confirm" / name / "test_predictions.csv")
        assert row["top1"] == pytest.approx((tested["label"] == tested["top1"]).mean())
    assert "Confirmation on the fixed test part" in out and "genre-train " in out


@pytest.mark.slow
@pytest.mark.long
def test_a_run_refitted_on_the_fixed_test_part_joins_the_confirmation_and_one_on_other_posters_is_refused(
    searched: Path, poster_root: Path
):
    folder, refit = searched / "search", searched / "recipe_in_use"
    # The recipe a user has in use (here: more label smoothing), refitted as docs/search.md says: the
    # search's data settings and data.fold=all, outside the search.
    recipe = [o for o in TINY if not o.startswith(("hydra", "++hydra"))]
    with open(searched / "refit.log", "w") as log:
        done = run_cli(
            "genre-train", *recipe, f"data.root={poster_root}", "data.fold=all", "model.label_smoothing=0.3",
            f"hydra.run.dir={refit}", cwd=searched, stdout=log, timeout=900,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    done = run_cli("genre-report", f"sweep_dir={folder}", f"compare_with=[{refit}]", cwd=searched)
    assert done.returncode == 0, done.stderr[-3000:]
    confirmation = pd.read_csv(folder / "search_confirmation.csv")
    assert len(confirmation) == 3
    (row,) = [row for _, row in confirmation.iterrows() if row["recipe"].endswith("(compare_with)")]
    tested = pd.read_csv(refit / "test_predictions.csv")
    assert row["top1"] == pytest.approx((tested["label"] == tested["top1"]).mean())
    assert row["posters"] == len(tested)
    # A fold run predicted other posters: a paired comparison is impossible, and says so in one line.
    fold_run = folder / "baseline" / "fold_0"
    done = run_cli("genre-report", f"sweep_dir={folder}", f"compare_with=[{fold_run}]", cwd=searched)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("error: compare_with=") and "fixed-test posters" in lines[0]
    # Without compare_with the confirmation is the two refits again.
    assert run_cli("genre-report", f"sweep_dir={folder}", cwd=searched).returncode == 0
    assert len(pd.read_csv(folder / "search_confirmation.csv")) == 2


def one_line_error(posters: Path, tmp_path: Path, *extra: str) -> str:
    done = run_cli(*search_command(posters, tmp_path / "search", *extra), cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    assert not list((tmp_path / "search").glob("*/fold_*/metrics.json"))  # nothing trained
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            ["+hydra.sweeper.params.model.optimizer.lrr='interval(0.1, 0.2)'"],
            "hydra.sweeper.params.model.optimizer.lrr",
        ),
        (["data.folds=null", "data.cv_test_fraction=0"], "data.folds=None is not valid: expected an integer of at"),
        (["+hydra.sweeper.params.data.split_seed='choice(1, 2)'"], "hydra.sweeper.params.data.split_seed"),
        (["hydra.sweeper.metric=accuracy"], "hydra.sweeper.metric='accuracy' is not valid: expected one of"),
    ],
)
def test_bad_search_input_is_one_line_before_any_training(
    poster_root: Path, tmp_path: Path, extra: list[str], expected: str
):
    assert expected in one_line_error(poster_root, tmp_path, *extra)


@pytest.mark.slow
def test_a_storage_of_another_study_or_fold_assignment_is_refused(poster_root: Path, tmp_path: Path):
    other = tmp_path / "other.journal"
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(other)))
    optuna.create_study(study_name="someone-elses", storage=storage)
    line = one_line_error(poster_root, tmp_path, f"hydra.sweeper.storage={other}")
    assert "hydra.sweeper.storage" in line and "someone-elses" in line
    # The same study name scored on another fold assignment (the posters changed since): refused.
    (tmp_path / "search").mkdir(exist_ok=True)  # the first command made it (its split, no study)
    mine = optuna.create_study(
        study_name="train",
        storage=optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "search" / "study.journal"))),
    )
    mine.set_user_attr("fold_digest", "0123456789abcdef")
    line = one_line_error(poster_root, tmp_path, "hydra.sweeper.study_name=train")
    assert "fold assignment" in line and "0123456789abcdef" in line


@pytest.mark.slow
@pytest.mark.long
def test_a_trial_with_the_values_of_a_finished_one_takes_its_value_without_running(poster_root: Path, tmp_path: Path):
    # lr 0.003 is the command line's own recipe (TINY): such a trial takes baseline/'s value; lr 0.002 runs
    # once, and a later draw of it takes that trial's value.
    folder = tmp_path / "search"
    command = [
        *search_command(poster_root, folder, "hydra.sweeper.n_trials=4", "hydra.sweeper.confirm=false"),
        "data.folds=2",
        "hydra.sweeper.pruner=none",
        "++hydra.sweeper.params={model.optimizer.lr: 'choice(0.003, 0.002)', model.label_smoothing: 'choice(0.0)'}",
    ]
    done = run_cli(*command, cwd=tmp_path, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = study(folder).trials
    assert all(t.state.name == "COMPLETE" for t in trials)
    baseline_value = json.loads((folder / "search.json").read_text())["baseline"]["value"]
    recipe = [t for t in trials if t.params["model.optimizer.lr"] == 0.003]
    other = [t for t in trials if t.params["model.optimizer.lr"] == 0.002]
    # The seeded draws give both values, the command line's twice: the second a repeat of a repeat.
    assert len(recipe) >= 2 and other, [t.params for t in trials]
    assert all(t.user_attrs["repeat_of"] == "baseline" and t.value == baseline_value for t in recipe)
    first, *later = other
    assert "repeat_of" not in first.user_attrs and first.user_attrs["folder"] == f"trial_{first.number:04d}"
    assert all(t.user_attrs["repeat_of"] == first.number and t.value == first.value for t in later)
    # Only the one new recipe ran.
    assert sorted(p.name for p in folder.glob("trial_*")) == [first.user_attrs["folder"]]


@pytest.mark.slow
def test_a_trial_that_changes_the_folder_name_still_runs_in_the_search_folder(poster_root: Path, tmp_path: Path):
    # The presets name the search folder after ${task_name}; choosing an experiment changes a trial's
    # task_name, so its fold runs must go where the sweeper resolved the folder, not where they would.
    command = [
        "genre-train",
        "-m",
        *TINY,
        f"data.root={poster_root}",
        "data.folds=2",
        "task_name=searched",
        "hydra.sweep.dir=${paths.output_root}/search/${task_name}",
        "hydra.sweeper.n_trials=1",
        "hydra.sweeper.confirm=false",
        "hydra.sweeper.pruner=none",
        "++hydra.sweeper.params={task_name: 'choice(renamed)', model.optimizer.lr: 'choice(0.003)'}",
    ]
    done = run_cli(*command, cwd=tmp_path, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    search = tmp_path / "outputs" / "search"
    assert sorted(p.name for p in search.iterdir()) == ["searched"]
    (trial,) = study(search / "searched").trials
    assert trial.state.name == "COMPLETE" and trial.params["task_name"] == "renamed"
    assert len(list((search / "searched" / "trial_0000").glob("fold_*/metrics.json"))) == 2
