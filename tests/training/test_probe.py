"""The linear probe head (finetune.head_init=probe): the closed-form fit, experiment=probe_cpu as a
run through genre-train (single process and DDP), and LP-FT's resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler

from genre_lightning.models.tta import resolve_tta
from genre_lightning.training.probe import PROBE_FILE, fit_one_vs_rest, fit_probe
from tests.helpers.cli import run_cli, run_entry_point
from tests.helpers.configs import FAST
from tests.helpers.rank_weights import OVERRIDE, RANK_ENV, assert_ranks_identical
from tests.helpers.recompute import single_label_metrics

GRID = [1e-3, 1e-2, 1e-1, 1.0]


def clusters(rng: np.random.Generator, count: int, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noisy points around one centre per class, with a large offset and scale per feature (so the
    standardisation the probe folds into its weights matters)."""
    labels = rng.integers(0, len(centres), count)
    points = centres[labels] + rng.normal(0, 2.0, (count, centres.shape[1]))
    return points * np.linspace(0.1, 50, centres.shape[1]) + 100, labels


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def test_the_probe_is_sklearns_regression_with_the_C_of_lowest_validation_log_loss():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (4, 12))
    train, val, new = (clusters(rng, n, centres) for n in (200, 80, 50))
    weight, bias, scores, chosen = fit_probe(train, val, GRID, num_classes=4)

    losses = {}
    for c in GRID:  # every C again, independently, as a scikit-learn pipeline
        scaler = StandardScaler().fit(train[0])
        regression = LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(train[0]), train[1])
        losses[c] = log_loss(val[1], regression.predict_proba(scaler.transform(val[0])), labels=range(4))
        if c == chosen:
            expected = regression.predict_proba(scaler.transform(new[0]))
    assert chosen == min(losses, key=losses.get)
    assert [s["val_log_loss"] for s in scores] == pytest.approx([losses[c] for c in GRID], rel=1e-9)
    # The linear layer on raw features gives the pipeline's probabilities.
    np.testing.assert_allclose(softmax(new[0] @ weight.T + bias), expected, atol=1e-8)


def test_a_genre_missing_from_training_is_never_predicted():
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 1, (4, 6))
    train, val = clusters(rng, 120, centres), clusters(rng, 40, centres)
    keep = train[1] != 2
    weight, bias, _, _ = fit_probe((train[0][keep], train[1][keep]), val, GRID, num_classes=4)
    probabilities = softmax(val[0] @ weight.T + bias)
    assert probabilities.shape == (40, 4) and probabilities[:, 2].max() < 1e-6


def probe_run(poster_root: Path, folder: Path, ddp: bool = False, *overrides: str) -> tuple[dict, dict, str]:
    """``genre-train experiment=probe_cpu``: in this process, or (``ddp``) with trainer=ddp_cpu through
    the console script, stdout piped to a file, each rank writing its weights digest (rank 1 re-runs
    the command line); (metrics.json, probe.json, the output)."""
    run = folder / "run"
    args = ["genre-train", "experiment=probe_cpu", *FAST, f"data.root={poster_root}", f"hydra.run.dir={run}"]
    args += overrides
    if ddp:
        with open(folder / "stdout.log", "w") as stdout:
            done = run_cli(*args, "trainer=ddp_cpu", OVERRIDE, cwd=folder, stdout=stdout, env=RANK_ENV)
        output = (folder / "stdout.log").read_text() + done.stderr
    else:
        done = run_entry_point(*args, cwd=folder)
        output = done.stdout + done.stderr
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((run / "metrics.json").read_text()), json.loads((run / PROBE_FILE).read_text()), output


@pytest.fixture(scope="module")
def single_probe(poster_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, str]:
    return probe_run(poster_root, tmp_path_factory.mktemp("probe"))


@pytest.mark.slow
def test_probe_cpu_validates_and_tests_exactly_the_fitted_head(single_probe):
    metrics, probe, output = single_probe
    assert probe["chosen_C"] == min(probe["grid"], key=lambda s: s["val_log_loss"])["C"]
    split = pd.read_csv(Path(metrics["best_ckpt_path"]).parent.parent / "annotations.csv")["split"]
    assert (probe["train_images"], probe["val_images"]) == ((split == "train").sum(), (split == "val").sum())
    # The validation epoch after the training step at LR 0 scores what the probe scored itself.
    assert metrics["final_val"]["val/acc"] == pytest.approx(probe["val_acc"], abs=1e-6)
    assert metrics["final_val"]["val/loss"] == pytest.approx(probe["val_log_loss"], rel=1e-4)
    assert "Linear probe head: C=" in output
    assert Path(metrics["best_ckpt_path"]).is_file()
    expected = single_label_metrics(Path(metrics["best_ckpt_path"]).parent.parent)
    assert metrics["test"]["test/acc"] == pytest.approx(expected["test/acc"], abs=1e-6)
    assert metrics["test"]["test/loss"] == pytest.approx(expected["test/loss"], rel=1e-4)


@pytest.mark.slow
def test_the_probe_is_fitted_on_the_test_time_views_it_is_evaluated_with(poster_root: Path, tmp_path: Path):
    """model.tta: the probe's features are averaged over the same views as evaluation's logits, so the
    validation epoch scores exactly what the probe scored on its own features."""
    views = {"hflip": True, "scales": [1.0, 1.25], "crops": "center"}
    metrics, probe, _ = probe_run(poster_root, tmp_path, False, "model.tta={scales: [1.0, 1.25], crops: center}")
    assert metrics["final_val"]["val/acc"] == pytest.approx(probe["val_acc"], abs=1e-6)
    assert metrics["final_val"]["val/loss"] == pytest.approx(probe["val_log_loss"], rel=1e-4)
    saved = torch.load(metrics["best_ckpt_path"], map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["tta"] == {"scales": [1.0, 1.25], "crops": "center"}
    assert resolve_tta(saved["hyper_parameters"]["tta"], saved["hyper_parameters"]["tta_hflip"]) == resolve_tta(views)


@pytest.mark.slow
def test_probe_cpu_under_ddp_fits_the_same_head_on_every_rank(single_probe, poster_root: Path, tmp_path: Path):
    metrics, probe, output = probe_run(poster_root, tmp_path, ddp=True)
    assert_ranks_identical(tmp_path / "run")
    assert metrics["ddp"]["world_size"] == 2 and metrics["ddp"]["identical"]
    # The scan and split finished before the second process started: it never waited on a scan.
    assert output.index("Split (train/val/test)") < output.index("Initializing distributed: GLOBAL_RANK: 1")
    # Each rank computed half the features; both fitted on all of them: the single-process probe.
    single_metrics, single, _ = single_probe
    assert probe["chosen_C"] == single["chosen_C"] and probe["train_images"] == single["train_images"]
    assert probe["val_acc"] == pytest.approx(single["val_acc"])
    assert metrics["test"]["test/acc"] == pytest.approx(single_metrics["test"]["test/acc"])


@pytest.mark.slow
def test_lp_ft_fits_the_probe_once_and_not_again_on_resume(poster_root: Path, tmp_path: Path):
    run = tmp_path / "run"
    common = [
        *FAST, f"data.root={poster_root}", f"hydra.run.dir={run}", "finetune=head_then_all",
        "finetune.head_init=probe", "finetune.milestones=[0]", "trainer.limit_train_batches=2",
    ]  # fmt: skip
    first = run_entry_point("genre-train", *common, "trainer.max_epochs=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    said = first.stdout + first.stderr
    written = (run / PROBE_FILE).stat().st_mtime_ns
    # The probe head first, then the whole backbone trains from epoch 0 (LP-FT).
    assert said.index("Linear probe head: C=") < said.index("epoch 1: unfroze backbone chunk 1/1")

    resumed = run_entry_point("genre-train", *common, "trainer.max_epochs=2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout + resumed.stderr
    # The resumed run continues from its checkpoint's head: no second fit.
    assert "Linear probe head" not in resumed.stdout + resumed.stderr
    assert (run / PROBE_FILE).stat().st_mtime_ns == written


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["finetune.head_init=closed_form"], "error: finetune.head_init='closed_form' is not valid: expected random"),
        (["finetune.head_init=probe", "finetune.probe_c_grid=[]"], "error: finetune.probe_c_grid=[] is not valid"),
    ],
)
def test_bad_probe_settings_are_one_line_errors(overrides, expected, poster_root: Path, tmp_path: Path):
    done = run_entry_point("genre-train", *FAST, f"data.root={poster_root}", "finetune=head_then_all", *overrides,
                           f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith(expected), done.stderr[-2000:]


def test_the_multilabel_probe_is_one_binary_regression_per_genre_with_the_C_of_lowest_mean_log_loss():
    rng = np.random.default_rng(2)
    centres = rng.normal(0, 1, (5, 10))

    def multilabel(count: int) -> tuple[np.ndarray, np.ndarray]:
        points, first = clusters(rng, count, centres)
        targets = np.zeros((count, 6), dtype=np.int64)  # genre 5: every image (a constant)
        targets[np.arange(count), first] = 1
        targets[:, 4] |= first == 0  # genre 4 only ever beside genre 0
        targets[:, 5] = 1
        return points, targets

    train, val, new = multilabel(240), multilabel(80), multilabel(40)
    weight, bias, scores, chosen = fit_one_vs_rest(train, val, GRID)
    losses, expected = {}, {}
    for c in GRID:  # every genre's regression again, independently, on scikit-learn's standardisation
        scaler = StandardScaler().fit(train[0])
        per_genre, probabilities = [], []
        for genre in range(5):
            regression = LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(train[0]), train[1][:, genre])
            p = regression.predict_proba(scaler.transform(val[0]))[:, 1]
            per_genre.append(log_loss(val[1][:, genre], p, labels=[0, 1]))
            probabilities.append(regression.predict_proba(scaler.transform(new[0]))[:, 1])
        per_genre.append(log_loss(val[1][:, 5], np.full(len(val[1]), 1 - 1e-15), labels=[0, 1]))
        losses[c], expected[c] = np.mean(per_genre), np.stack(probabilities, axis=1)
    assert chosen == min(losses, key=losses.get)
    assert [s["val_log_loss"] for s in scores] == pytest.approx([losses[c] for c in GRID], rel=1e-6, abs=1e-9)
    sigmoid = 1 / (1 + np.exp(-(new[0] @ weight.T + bias)))
    np.testing.assert_allclose(sigmoid[:, :5], expected[chosen], atol=1e-8)
    assert (sigmoid[:, 5] > 0.999).all()  # the genre every training image has
