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
