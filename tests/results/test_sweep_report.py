"""genre-report on a real Hydra multirun: 2 learning rates x 2 seeds of the tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from genre_lightning.results.sweep_report import summarise, to_markdown
from tests.helpers.cli import run_cli, run_entry_point
from tests.helpers.configs import FAST

LRS = ("0.001", "0.003")


@pytest.fixture(scope="module")
def sweep(poster_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("sweep")
    done = run_entry_point(  # in this process: tests/launch/test_sweep.py runs a multirun through the console script
        "genre-train",
        "-m",
        "seed=1,2",
        f"model.optimizer.lr={','.join(LRS)}",
        *FAST,
        f"data.root={poster_root}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "finetune=none",
        "artifacts=none",
        "logger=csv",
        f"hydra.sweep.dir={base}/multirun",
        cwd=base,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return base / "multirun"


def job_values(sweep: Path) -> pd.DataFrame:
    """Each job's lr, seed and metrics, read straight from its own files."""
    rows = []
    for job in sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file()):
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        metrics = json.loads((job / "metrics.json").read_text())
        rows.append(
            {
                "lr": overrides["model.optimizer.lr"],
                "seed": overrides["seed"],
                "test/acc": metrics["test"]["test/acc"],
                "test/ece": metrics["test"]["test/ece"],
                "val/acc_best": metrics["best_val"]["val/acc"],
            }
        )
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_report_groups_the_seeds_and_its_mean_and_std_match_the_jobs(sweep: Path):
    done = run_cli("genre-report", f"sweep_dir={sweep}", cwd=sweep)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(sweep / "report.csv", dtype={"model.optimizer.lr": str})
    jobs = job_values(sweep)
    assert len(jobs) == 4 and sorted(table["model.optimizer.lr"]) == sorted(LRS)
    assert list(table["n"]) == [2, 2] and set(table["seeds"]) == {"1,2"}
    for _, row in table.iterrows():
        mine = jobs[jobs["lr"] == row["model.optimizer.lr"]]
        for metric in ("test/acc", "test/ece", "val/acc_best"):
            assert row[f"{metric}_mean"] == pytest.approx(np.mean(mine[metric]), abs=1e-9), metric
            assert row[f"{metric}_std"] == pytest.approx(np.std(mine[metric], ddof=1), abs=1e-9), metric
    assert list(table["test/acc_mean"]) == sorted(table["test/acc_mean"], reverse=True)
    markdown = (sweep / "report.md").read_text()
    assert markdown == done.stdout[: len(markdown)]
    first = table.iloc[0]
    expected = (
        f"| {first['model.optimizer.lr']} | 2 | 1,2 | {first['test/acc_mean']:.4f} ± {first['test/acc_std']:.4f} |"
    )
    assert expected in markdown
    assert "`finetune=none`" in markdown  # an override every job shares is listed once, not as a column


@pytest.mark.slow
def test_unfinished_jobs_are_listed_sorting_follows_the_metric_and_a_bad_metric_is_one_line(
    sweep: Path, tmp_path: Path
):
    copy = tmp_path / "multirun"
    shutil.copytree(sweep, copy)
    crashed = copy / "4" / ".hydra"
    crashed.mkdir(parents=True)
    shutil.copy(copy / "0" / ".hydra" / "overrides.yaml", crashed / "overrides.yaml")

    # In this process: the test above runs the console script.
    done = run_entry_point("genre-report", f"sweep_dir={copy}", "metric=test/ece", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(copy / "report.csv")
    assert list(table["test/ece_mean"]) == sorted(table["test/ece_mean"])  # lower is better: ascending
    assert "Jobs without metrics.json (failed or unfinished): 4" in (copy / "report.md").read_text()
    assert table["n"].sum() == 4

    bad = run_entry_point("genre-report", f"sweep_dir={copy}", "metric=test/accuracy", cwd=tmp_path)
    assert bad.returncode == 2
    (line,) = bad.stderr.strip().splitlines()
    assert line.startswith("error: metric='test/accuracy' is not valid: expected one of [") and "'test/acc'" in line


def test_a_job_with_a_nan_metric_is_flagged_not_hidden_in_the_mean():
    jobs = pd.DataFrame(
        {
            "job": ["0", "1"],
            "override:seed": ["1", "2"],
            "test/acc": [0.5, 0.7],
            "test/ece": [0.1, float("nan")],  # the second job diverged
        }
    )
    table, shared = summarise(jobs, "test/acc")
    assert table.loc[0, "n"] == 2 and table.loc[0, "test/ece_count"] == 1 and table.loc[0, "test/acc_count"] == 2
    markdown = to_markdown(table, "test/acc", shared, [])
    assert "0.1000 (of 1 jobs)" in markdown and "0.6000 ± 0.1414 |" in markdown
