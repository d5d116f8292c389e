"""Progress a person can follow in a log file: one line per epoch, with the run's own numbers."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd
import pytest

from genre_lightning.utils.progress import Progress, duration, tracked
from tests.helpers.cli import run_cli
from tests.helpers.configs import FAST

LINE = re.compile(r"epoch (\d+)/(\d+)  (.*)$")


def parse(line: str) -> dict[str, str]:
    """'train/loss 1.2345  val/acc 0.5  best val/acc 0.6 (epoch 2)  lr head 1e-3 backbone1 1e-4  3.1 s  ETA 6.2 s'"""
    fields: dict[str, str] = {}
    for part in line.split("  "):
        name, _, value = part.partition(" ")
        fields["best" if name == "best" else name] = value
    return fields


@pytest.mark.slow
def test_a_piped_run_logs_one_line_per_epoch_with_the_logged_numbers(poster_root: Path, tmp_path: Path):
    run = tmp_path / "run"
    with (tmp_path / "stdout.log").open("w") as stdout:
        done = run_cli(
            "genre-train",
            *FAST,
            "trainer.enable_progress_bar=true",  # FAST turns it off; the default is on
            f"data.root={poster_root}",
            "trainer.max_epochs=3",
            "trainer.limit_train_batches=3",
            "data.batch_size=16",
            "finetune=head_then_all",
            "finetune.milestones=[1]",
            "logger=csv",
            "callbacks.progress.interval_s=0",  # a step line after every batch, as in a long epoch
            f"hydra.run.dir={run}",
            cwd=tmp_path,
            stdout=stdout,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    output = (tmp_path / "stdout.log").read_text()
    lines = [m for m in map(LINE.search, output.splitlines()) if m]
    assert [(int(m[1]), int(m[2])) for m in lines] == [(1, 3), (2, 3), (3, 3)]
    # The same lines are in the run folder's log.
    assert len([m for m in map(LINE.search, (run / "train.log").read_text().splitlines()) if m]) == 3

    logged = pd.read_csv(run / "csv" / "metrics.csv")
    lr_rows = logged[logged["lr-AdamW/head"].notna()]
    best = -1.0
    for m in lines:
        epoch, fields = int(m[1]) - 1, parse(m[3])
        rows = logged[logged["epoch"] == epoch]
        for name in ("train/loss", "val/loss", "val/acc", "val/f1_macro"):
            value = rows[name].dropna().iloc[-1]
            assert float(fields[name]) == pytest.approx(value, abs=5e-5), (epoch, name)
        val_acc = rows["val/acc"].dropna().iloc[-1]
        if val_acc > best:
            best, best_epoch = val_acc, epoch + 1
        value, when = re.fullmatch(r"val/acc ([0-9.]+) \(epoch (\d+)\)", fields["best"]).groups()
        assert float(value) == pytest.approx(best, abs=5e-5) and int(when) == best_epoch
        # The LRs of the param groups in that epoch: the head alone in epoch 1, then the backbone too.
        # LearningRateMonitor logs one row per epoch, at its first step.
        lrs = dict(zip(*[iter(fields["lr"].split())] * 2, strict=True))
        monitored = lr_rows.iloc[epoch]
        assert float(lrs["head"]) == pytest.approx(monitored["lr-AdamW/head"], rel=1e-2)
        assert ("backbone1" in lrs) == (epoch >= 1)
        if epoch >= 1:
            assert float(lrs["backbone1"]) == pytest.approx(monitored["lr-AdamW/backbone1"], rel=1e-2)
        assert re.search(r"  (\d+\.\d s|\d+m \d{2}s|\d+h \d{2}m)(  ETA |$)", m[0])  # the epoch's seconds
    assert "ETA" in lines[0][3] and "ETA" in lines[1][3] and "ETA" not in lines[2][3]
    # Inside each epoch, validation and the test: step lines with the count of batches.
    steps = re.findall(r"\] - (?:epoch (\d)/3 )?(train|validation|test) step (\d+)/(\d+) \(\d+%\)", output)
    assert [(e, n, t) for e, phase, n, t in steps if phase == "train"] == [
        (str(e), str(n), "3") for e in (1, 2, 3) for n in (1, 2, 3)
    ]
    assert {e for e, phase, _, _ in steps if phase == "validation"} == {"1", "2", "3"}
    assert [n for _, phase, n, _ in steps if phase == "test"][-1] == [t for _, phase, _, t in steps if phase == "test"][
        -1
    ]


def test_a_long_phase_logs_its_count_rate_and_time_left(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="genre_lightning.utils.progress"):
        assert list(tracked(range(5), 5, "verify", "files", interval_s=0)) == list(range(5))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("verify: 1/5 files (20%)") and "files/s" in lines[0] and "left" in lines[0]
    assert lines[-1].startswith("verify: 5/5 files (100%)") and "left" not in lines[-1]
    caplog.clear()
    with (
        caplog.at_level(logging.INFO, logger="genre_lightning.utils.progress"),
        Progress(3, "predict", "images") as bar,
    ):
        bar.advance(3)  # a phase shorter than the interval: no lines
    assert caplog.records == []


@pytest.mark.parametrize(("seconds", "text"), [(3.14, "3.1 s"), (65, "1m 05s"), (3725, "1h 02m")])
def test_durations_read_like_a_clock(seconds: float, text: str):
    assert duration(seconds) == text
