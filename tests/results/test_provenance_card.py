"""The card of a model trained on every fold (the data.fold=all refit, the fold ensemble) carries the
cross-validation's out-of-fold estimate with its interval and the fold assignment, as a user makes
them: a 2-fold sweep (genre-train -m), genre-report, the two final models it prints the commands
for, then genre-export format=card. Every number is recomputed from the files the runs wrote."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.helpers.cli import run_cli, run_entry_point

pytestmark = [pytest.mark.slow, pytest.mark.long]  # a cross-validation sweep, its report and two final models

SWEEP = [
    "debug=tests",
    "data.folds=2",
    "data.fold=0,1",
    "data.cv_test_fraction=0.2",
    "data.batch_size=16",
    "trainer.max_epochs=2",
    "finetune=none",
    "logger=csv",
]


def printed_command(markdown: str, program: str) -> list[str]:
    (line,) = [line.strip() for line in markdown.splitlines() if line.strip().startswith(program + " ")]
    return shlex.split(line)[1:]


def run(*args: str, cwd: Path) -> str:
    done = run_entry_point(*args, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def sweep(poster_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sweep folder, with genre-report's output and the final models in final/refit, final/fold_ensemble."""
    base = tmp_path_factory.mktemp("cv_card")
    sweep = base / "sweep"
    with open(base / "sweep.log", "w") as log:
        done = run_cli("genre-train", "-m", f"data.root={poster_root}", *SWEEP, f"hydra.sweep.dir={sweep}",
                       cwd=base, stdout=log, timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    markdown = run("genre-report", f"sweep_dir={sweep}", cwd=base)
    run("genre-train", *printed_command(markdown, "genre-train"), f"hydra.run.dir={sweep}/final/refit", cwd=base)
    ensemble = printed_command(markdown, "genre-ensemble")
    run("genre-ensemble", *ensemble, "debug=tests", f"hydra.run.dir={sweep}/final/fold_ensemble", cwd=base)
    return sweep


def card(ckpt: Path, cwd: Path, *options: str) -> str:
    output = cwd / f"card_{len(list(cwd.glob('card_*')))}.md"
    run("genre-export", f"ckpt_path={ckpt}", "format=card", f"output={output}", *options, cwd=cwd)
    return output.read_text()


def final_checkpoints(sweep: Path) -> dict[str, Path]:
    refit = json.loads((sweep / "final" / "refit" / "metrics.json").read_text())["best_ckpt_path"]
    return {"refit": Path(refit), "ensemble": sweep / "final" / "fold_ensemble" / "checkpoints" / "ensemble.ckpt"}


def expected_estimate_lines(sweep: Path) -> list[str]:
    """The out-of-fold lines the card must hold: report.csv's row, its top-1 recomputed from oof_predictions.csv."""
    (row,) = pd.read_csv(sweep / "report.csv").to_dict("records")
    oof = pd.read_csv(sweep / "oof_predictions.csv")
    assert row["top1"] == pytest.approx((oof["label"] == oof["top1"]).mean())
    assert row["posters"] == len(oof) and row["top1_low"] < row["top1"] < row["top1_high"]
    return [
        f"- Out-of-fold top-1 accuracy: **{100 * row['top1']:.1f}%** (95% bootstrap interval "
        f"{100 * row['top1_low']:.1f}-{100 * row['top1_high']:.1f}%)",
        f"- Out-of-fold macro F1: **{100 * row['f1_macro']:.1f}%** (95% bootstrap interval "
        f"{100 * row['f1_macro_low']:.1f}-{100 * row['f1_macro_high']:.1f}%)",
        f"- Out of fold: recipe `{row['recipe']}`, 1 run(s) (seeds averaged), {row['posters']} posters, "
        f"from `{sweep / 'report.csv'}`",
    ]


def test_the_refit_and_the_fold_ensemble_cards_carry_the_out_of_fold_estimate(
    sweep: Path, poster_root: Path, tmp_path: Path
):
    digest = json.loads((sweep / "0" / "metrics.json").read_text())["cross_validation"]["fold_digest"]
    folds = pd.read_csv(sweep / "annotations.csv", dtype={"fold": str})
    holdout = int((folds["fold"] == "holdout").sum())
    estimate = expected_estimate_lines(sweep)
    for name, ckpt in final_checkpoints(sweep).items():
        text = card(ckpt, tmp_path)
        for line in estimate:
            assert line in text, (name, line)
        assert f"- Fold assignment: 2 folds, data.split_seed=0, assignment digest `{digest}`" in text
        assert "split 2-fold cross-validation" in text and "70/15/15" not in text
        assert f"- Source: `{poster_root}` (**synthetic demo posters**" in text  # an ensemble's: its members'
        tested = pd.read_csv(ckpt.parent.parent / "test_predictions.csv")
        assert len(tested) == holdout and f"tested on the {holdout} posters of the fixed test part" in text
        accuracy = json.loads((ckpt.parent.parent / "metrics.json").read_text())["test"]["test/acc"]
        assert f"top-1 accuracy: **{accuracy:.3f}**" in text and accuracy == pytest.approx(tested["correct"].mean())
        environment = torch.load(ckpt, weights_only=True)["genre_lightning"]["environment"]
        assert f"torch {environment['packages']['torch']}" in text and environment["packages"]["torch"]
    assert "the ensemble of the 2 fold runs" in text and "- Fold runs: `0`, `1`" in text


def test_a_refit_away_from_its_sweep_says_so_or_takes_cv_report(sweep: Path, tmp_path: Path):
    moved = tmp_path / "elsewhere" / "refit"
    shutil.copytree(sweep / "final" / "refit", moved)
    ckpt = moved / "checkpoints" / final_checkpoints(sweep)["refit"].name
    text = card(ckpt, tmp_path)
    assert "- **No out-of-fold estimate found**: no genre-report output (report.csv) in a folder above" in text
    assert "Out-of-fold top-1" not in text and "| genre |" in text  # the fixed test part's table is still there
    text = card(ckpt, tmp_path, f"cv_report={sweep / 'report.csv'}")
    assert all(line in text for line in expected_estimate_lines(sweep))
    done = run_entry_point("genre-export", f"ckpt_path={ckpt}", "format=card", f"cv_report={tmp_path}", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == (
        f"error: cv_report='{tmp_path}' is not valid: expected a cross-validation sweep folder that genre-report "
        "wrote report.csv and oof_predictions.csv into (genre-report sweep_dir=<it>)"
    )
