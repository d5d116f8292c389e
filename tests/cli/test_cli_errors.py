"""Config mistakes on the command line: one line naming the key, the value and what is valid (exit 2).

The first case runs the console script; the others call the same entry function in this process
(``run_entry_point``: the same Hydra and error-handling path, without ~10 s of imports each)."""

from pathlib import Path

import pytest

from tests.helpers.cli import run_cli, run_entry_point
from tests.helpers.configs import FAST

CASES = [
    pytest.param(  # through the console script: slow (a new interpreter)
        ["data.root=/no/such/folder"],
        "error: data.root='/no/such/folder' is not valid: expected an existing folder",
        marks=pytest.mark.slow,
    ),
    (["model.backbone=resnet_18"], "error: model.backbone='resnet_18' is not valid: expected a timm model name; did"),
    (["data.fractions.train=0.8"], "error: data.fractions="),
    (["data.classes=[Action,Comedy,Horror,Western]"], "error: data.classes=['Action', 'Comedy', 'Horror', 'Western']"),
    (["data.duplicates.policy=dedupe"], "error: data.duplicates.policy='dedupe' is not valid: expected one of"),
    (["data.split_file=STALE"], "error: data.split_file="),
    # a key the data module does not have (a typo): named, with the keys it has
    (["+data.batchsize=8"], "error: data.batchsize=8 is not valid: expected one of the data keys ['annotations', "),
    # cross-validation (data.folds): the poster folder has 30 posters per genre, no copies
    (["data.folds=3", "data.fold=3"], "error: data.fold=3 is not valid: expected an integer from 0 to 2, or all"),
    (["data.folds=1", "data.fold=0"], "error: data.folds=1 is not valid: expected null (one train/val/test split)"),
    (
        ["data.folds=31", "data.fold=0"],
        "error: data.folds=31 is not valid: expected an integer from 2 to 30: the smallest genre's number of "
        "duplicate groups (Action: 30)",
    ),
    (["data.folds=3"], "error: data.fold=None is not valid: expected the fold this run holds out, 0 to 2"),
    (["data.fold=1"], "error: data.fold=1 is not valid: expected null without data.folds"),
    (
        ["data.folds=3", "data.fold=all"],  # the refit trains on every poster: none is left to test on
        "error: test=True is not valid: expected false for data.fold=all without a fixed test part",
    ),
    # a test split that rounds to no poster at all, with test=true: stopped before training, not in trainer.test
    (
        ["data.fractions={train:0.85,val:0.149,test:0.001}"],
        "error: data.fractions={'train': 0.85, 'val': 0.149, 'test': 0.001} is not valid: expected fractions that "
        "leave at least one poster in the test split (or test=false)",
    ),
]


@pytest.mark.parametrize("overrides, expected", CASES)
def test_cli_reports_config_mistakes_in_one_line(overrides, expected, poster_root: Path, tmp_path: Path):
    stale = tmp_path / "old_annotations.csv"  # a split whose images were moved away since
    stale.write_text(f"file_path,label,split\n{tmp_path}/moved/a.jpg,Action,train\n")
    overrides = [o.replace("STALE", str(stale)) for o in overrides]
    run = run_cli if overrides == CASES[0].values[0] else run_entry_point
    done = run(
        "genre-train", *FAST, f"data.root={poster_root}", *overrides, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(expected), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


@pytest.mark.slow
def test_genre_report_with_a_bare_path_says_to_use_sweep_dir(tmp_path: Path):
    """The first thing many type: a folder without sweep_dir= (Hydra would answer with its grammar error)."""
    done = run_cli("genre-report", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == f"error: {str(tmp_path)!r} is not a key=value argument: use genre-report sweep_dir={tmp_path}"
    )
