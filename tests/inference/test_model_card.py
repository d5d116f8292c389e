"""genre-export format=card: the model's README.md, filled from its run folder and checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from genre_lightning.inference.model_card import wilson_interval
from tests.helpers.cli import run_entry_point

pytestmark = pytest.mark.slow


def test_the_card_states_the_runs_own_numbers_and_limits(tiny_run: Path, tmp_path: Path):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    ckpt = metrics["best_ckpt_path"]
    done = run_entry_point("genre-export", f"ckpt_path={ckpt}", "format=card", f"output={tmp_path / 'README.md'}",
                           cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    card = (tmp_path / "README.md").read_text()
    test = metrics["test"]
    tested = pd.read_csv(tiny_run / "test_predictions.csv")
    n = len(tested)
    low, high = wilson_interval(int(tested["correct"].sum()), n)
    assert f"top-1 accuracy: **{test['test/acc']:.3f}** (95% Wilson interval {low:.3f}-{high:.3f}, n = {n})" in card
    for genre, count in tested["label"].value_counts().items():
        row = f"| {genre} | {count} | {test[f'test/precision/{genre}']:.3f} | {test[f'test/recall/{genre}']:.3f} |"
        assert row in card
    temperature = torch.load(ckpt, weights_only=True)["state_dict"]["task.temperature"]
    assert f"Temperature: {float(temperature):.4f} (logits divided by it" in card  # fitted on validation
    assert "**synthetic demo posters**" in card  # the fixture's posters come from the demo generator
    assert "94% are filed under one genre" in card and "## Intended use" in card
    assert f"genre-eval ckpt_path={ckpt}" in card


def test_wilson_interval_matches_statsmodels_reference_values():
    # 8 of 10: the Wilson 95% interval is 0.490-0.943 (Wilson 1927; e.g. statsmodels proportion_confint).
    low, high = wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.49, 0.943)
