"""One table of which split a run uses (genre_lightning/data/split_choice.py), case by case."""

from __future__ import annotations

from pathlib import Path

import pytest

from genre_lightning.data.split_choice import checkpoint_split, choose_split
from genre_lightning.utils.errors import ConfigError

# (what exists, what is given) -> the source that wins. "own": the run folder has its annotations.csv;
# "ckpt": ckpt_path is a checkpoint of another run that has one; "sweep": the sweep's shared split applies.
CASES = [
    ({"own", "ckpt", "sweep"}, {"split_file", "ckpt", "sweep"}, "split_file"),
    ({"own", "ckpt", "sweep"}, {"ckpt", "sweep"}, "checkpoint"),
    ({"own", "sweep"}, {"sweep"}, "sweep"),
    ({"own"}, set(), "run_folder"),
    (set(), set(), "new"),
    ({"ckpt"}, set(), "new"),  # a checkpoint that exists but was not asked for plays no part
    ({"own", "ckpt_here"}, {"ckpt_here"}, "run_folder"),  # resuming this run folder's own checkpoint
]


def layout(tmp_path: Path, exists: set[str]) -> dict[str, Path]:
    paths = {
        "own": tmp_path / "run" / "annotations.csv",
        "ckpt": tmp_path / "earlier" / "checkpoints" / "last.ckpt",
        "ckpt_here": tmp_path / "run" / "checkpoints" / "last.ckpt",
        "sweep": tmp_path / "sweep" / "annotations.csv",
        "split_file": tmp_path / "chosen.csv",
    }
    for name in exists | {"split_file"}:
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        paths[name].write_text("x")
        if name.startswith("ckpt"):
            (paths[name].parent.parent / "annotations.csv").write_text("x")
    return paths


@pytest.mark.parametrize(("exists", "given", "source"), CASES)
def test_the_first_source_in_the_order_wins(tmp_path: Path, exists: set[str], given: set[str], source: str):
    paths = layout(tmp_path, exists)
    ckpt = paths["ckpt_here"] if "ckpt_here" in given else paths["ckpt"] if "ckpt" in given else None
    choice = choose_split(
        split_file=paths["split_file"] if "split_file" in given else None,
        checkpoint=checkpoint_split(ckpt),
        sweep=paths["sweep"] if "sweep" in given else None,
        run_folder=tmp_path / "run",
    )
    assert choice.source == source
    expected = {
        "split_file": paths["split_file"],
        "checkpoint": tmp_path / "earlier" / "annotations.csv",
        "sweep": paths["sweep"],
        "run_folder": paths["own"],
        "new": None,
    }[source]
    assert (choice.path.resolve() if choice.path else None) == (expected.resolve() if expected else None)


def test_a_checkpoint_that_does_not_exist_is_one_line(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"ckpt_path='.*missing.ckpt' is not valid: expected an existing checkpoint"):
        checkpoint_split(tmp_path / "missing.ckpt")


def test_a_checkpoint_outside_a_run_folder_has_no_split(tmp_path: Path):
    (tmp_path / "loose.ckpt").write_text("x")
    assert checkpoint_split(tmp_path / "loose.ckpt") is None
