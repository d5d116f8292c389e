"""Losses for uneven genres (model.class_weights, model.loss=focal): the formula against PyTorch's own
weighted cross-entropy and Lin et al.'s focal loss, Mixup's soft targets, the linear probe's
class-weighted regression, genre-train with auto weights (the checkpoint, metrics.json, DDP), and
the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler
from timm.data.mixup import mixup_target

from genre_lightning.data.demo import GENRES
from genre_lightning.training.losses import inverse_frequency_weights, soft_cross_entropy
from genre_lightning.training.probe import PROBE_FILE, fit_probe
from genre_lightning.training.tasks import make_task
from tests.helpers.cli import run_cli, run_entry_point
from tests.helpers.configs import FAST
from tests.helpers.rank_weights import OVERRIDE, RANK_ENV, assert_ranks_identical

WEIGHTS = torch.tensor([0.5, 1.0, 3.0, 1.5])


def batch(seed: int = 0, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=generator) * 3, torch.randint(0, 4, (n,), generator=generator)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_weighted_loss_is_pytorchs_weighted_cross_entropy_per_poster(smoothing: float):
    logits, targets = batch()
    task = make_task("single", GENRES, smoothing, class_weights=dict(zip(GENRES, WEIGHTS.tolist(), strict=True)))
    per_poster = F.cross_entropy(logits, targets, weight=WEIGHTS, label_smoothing=smoothing, reduction="none")
    # The batch mean (PyTorch's own mean would divide by the batch's sum of weights instead).
    torch.testing.assert_close(task.loss(logits, targets), per_poster.mean())
    unweighted = make_task("single", GENRES, smoothing)
    torch.testing.assert_close(
        unweighted.loss(logits, targets), F.cross_entropy(logits, targets, label_smoothing=smoothing)
    )


def test_focal_loss_is_lin_et_al_and_gamma_zero_is_cross_entropy():
    logits, targets = batch(1)
    p_true = logits.softmax(-1).gather(1, targets[:, None])[:, 0]
    focal = make_task("single", GENRES, loss="focal", focal_gamma=2.0)
    torch.testing.assert_close(focal.loss(logits, targets), (-((1 - p_true) ** 2) * p_true.log()).mean())
    weighted = dict(zip(GENRES, WEIGHTS.tolist(), strict=True))
    focal_weighted = make_task("single", GENRES, loss="focal", focal_gamma=2.0, class_weights=weighted)
    expected = -WEIGHTS[targets] * (1 - p_true) ** 2 * p_true.log()
    torch.testing.assert_close(focal_weighted.loss(logits, targets), expected.mean())
    gamma_zero = make_task("single", GENRES, loss="focal", focal_gamma=0.0)
    torch.testing.assert_close(gamma_zero.loss(logits, targets), F.cross_entropy(logits, targets))
    # A poster the model already gets right (p = 0.99) counts far less than under cross-entropy.
    confident = torch.tensor([[5.0, 0.0, 0.0, 0.0]])
    ratio = focal.loss(confident, torch.tensor([0])) / F.cross_entropy(confident, torch.tensor([0]))
    assert float(ratio) == pytest.approx(float(1 - confident.softmax(-1)[0, 0]) ** 2)


@pytest.mark.parametrize("loss", ["cross_entropy", "focal"])
def test_mixed_targets_weigh_as_the_mix_of_their_two_posters(loss: str):
    """timm's Mixup/CutMix targets (with label smoothing inside them): the loss of a mixed target is
    lam * the loss of the first poster's genre + (1 - lam) * the second's, weights and focal included."""
    logits, targets = batch(2)
    weights = dict(zip(GENRES, WEIGHTS.tolist(), strict=True))
    task = make_task("single", GENRES, 0.1, class_weights=weights, loss=loss)
    for lam in (1.0, 0.7, 0.25):
        mixed = mixup_target(targets, 4, lam, smoothing=0.1)  # image i mixed with image n-1-i
        expected = lam * task.loss(logits, targets) + (1 - lam) * task.loss(logits, targets.flip(0))
        torch.testing.assert_close(task.mixed_loss(logits, mixed), expected)
    assert float(soft_cross_entropy(logits, mixup_target(targets, 4, 1.0, 0.1), WEIGHTS)) == pytest.approx(
        float(F.cross_entropy(logits, targets, weight=WEIGHTS, label_smoothing=0.1, reduction="none").mean())
    )


def test_auto_weights_are_inverse_frequency_with_mean_one_over_the_training_posters():
    counts = [60, 30, 12, 18]
    weights = inverse_frequency_weights(counts, GENRES)
    assert sum(n * w for n, w in zip(counts, weights, strict=True)) / sum(counts) == pytest.approx(1.0)
    assert [w * n for n, w in zip(counts, weights, strict=True)] == pytest.approx([weights[0] * counts[0]] * 4)
    assert weights[2] / weights[0] == pytest.approx(60 / 12)


def test_the_probe_is_sklearns_class_weighted_regression_chosen_by_weighted_log_loss():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 0.6, (4, 8))

    def points(count: int, shares: list[float]) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.choice(4, count, p=shares)
        return centres[labels] + rng.normal(0, 1.0, (count, 8)), labels

    skewed = [0.55, 0.25, 0.05, 0.15]
    train, val = points(400, skewed), points(160, skewed)
    weights = [1.0, 2.0, 6.0, 3.0]
    grid = [1e-2, 1e-1, 1.0]
    weight, bias, scores, chosen = fit_probe(train, val, grid, num_classes=4, class_weights=weights)
    scaler = StandardScaler().fit(train[0])
    losses = {}
    for c in grid:
        regression = LogisticRegression(C=c, max_iter=3000, class_weight=dict(enumerate(weights)))
        regression.fit(scaler.transform(train[0]), train[1])
        probabilities = regression.predict_proba(scaler.transform(val[0]))
        losses[c] = log_loss(val[1], probabilities, labels=range(4), sample_weight=np.take(weights, val[1]))
        if c == chosen:
            expected = probabilities
    assert chosen == min(losses, key=losses.get)
    assert [s["val_log_loss"] for s in scores] == pytest.approx([losses[c] for c in grid], rel=1e-9)
    logits = val[0] @ weight.T + bias
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), expected, atol=1e-8)
    # The weights move decisions towards the rare genre.
    plain = fit_probe(train, val, [chosen], num_classes=4)
    rare = lambda w, b: int(((val[0] @ w.T + b).argmax(1) == 2).sum())  # noqa: E731
    assert rare(weight, bias) > rare(*plain[:2])


CONFIG_CASES = [
    (["model.class_weights={Western:2.0}"], "error: model.class_weights={'Western': 2.0} is not valid: expected null"),
    (
        ["model.class_weights={Horror:0}"],
        "error: model.class_weights.Horror=0 is not valid: expected a positive number",
    ),
    (["model.class_weights={Horror:-1.5}"], "error: model.class_weights.Horror=-1.5 is not valid: expected a positive"),
    (["model.class_weights=often"], "error: model.class_weights='often' is not valid: expected null, auto, or"),
    (["model.loss=hinge"], "error: model.loss='hinge' is not valid: expected one of cross_entropy, focal"),
    (["model.loss=focal", "model.focal_gamma=-1"], "error: model.focal_gamma=-1 is not valid: expected a number >= 0"),
    (
        ["data.task=multilabel", "model.class_weights=auto"],
        "error: model.class_weights='auto' is not valid: expected null for data.task=multilabel (model.pos_weight)",
    ),
    (
        ["data.task=multilabel", "model.loss=focal"],
        "error: model.loss='focal' is not valid: expected cross_entropy for data.task=multilabel",
    ),
]


@pytest.mark.parametrize("overrides, expected", CONFIG_CASES)
def test_bad_loss_settings_are_one_line_before_training(overrides, expected, poster_root: Path, tmp_path: Path):
    run = tmp_path / "run"
    args = ["genre-train", *FAST, f"data.root={poster_root}", *overrides, f"hydra.run.dir={run}"]
    done = run_entry_point(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = [line for line in done.stderr.strip().splitlines() if line.startswith("error:")]
    assert line.startswith(expected), done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not (run / "annotations.csv").exists()  # before the scan


def skewed_annotations(poster_root: Path, folder: Path, rare: str = "Horror", keep: int = 10) -> Path:
    """An annotations CSV of the test posters with one genre cut to ``keep`` (a seeded choice)."""
    rows = [(str(p), p.parent.name) for p in sorted(poster_root.rglob("*.jpg"))]
    frame = pd.DataFrame(rows, columns=["file_path", "label"])
    cut = frame[frame["label"] == rare].sample(n=keep, random_state=0)
    frame = pd.concat([frame[frame["label"] != rare], cut]).sort_values("file_path")
    csv = folder / "skewed.csv"
    frame.to_csv(csv, index=False)
    return csv


def expected_auto_weights(run: Path) -> dict[str, float]:
    split = pd.read_csv(run / "annotations.csv")
    counts = split[split["split"] == "train"]["label"].value_counts()
    return dict(zip(GENRES, inverse_frequency_weights([int(counts[g]) for g in GENRES], GENRES), strict=True))


@pytest.mark.slow
def test_genre_train_with_auto_weights_mixup_and_smoothing_records_the_resolved_weights(
    poster_root: Path, tmp_path: Path
):
    csv = skewed_annotations(poster_root, tmp_path)
    run = tmp_path / "run"
    done = run_cli(
        "genre-train", *FAST, f"data.annotations={csv}", "model.class_weights=auto", "model.loss=focal",
        "model.label_smoothing=0.1", "model.mixup={mixup_alpha:0.4,cutmix_alpha:1.0,prob:1.0}",
        "data.batch_size=16", "trainer.max_epochs=1", f"hydra.run.dir={run}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    expected = expected_auto_weights(run)
    assert expected["Horror"] > 2 * expected["Action"]  # the rare genre weighs more
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["loss"] == {"loss": "focal", "focal_gamma": 2.0, "class_weights": pytest.approx(expected)}
    checkpoint = torch.load(metrics["test_ckpt_path"], map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["class_weights"] == pytest.approx(expected)
    assert np.isfinite(metrics["final_val"]["val/loss"]) and np.isfinite(metrics["test"]["test/loss"])


@pytest.mark.slow
def test_the_probe_under_ddp_fits_the_same_class_weighted_head_on_every_rank(poster_root: Path, tmp_path: Path):
    """experiment=probe_cpu with model.class_weights=auto on two DDP ranks: both compute the same
    weights from the training split, the probe fits with them, and the ranks end identical."""
    csv = skewed_annotations(poster_root, tmp_path)
    run = tmp_path / "run"
    with open(tmp_path / "stdout.log", "w") as stdout:
        done = run_cli(
            "genre-train", "experiment=probe_cpu", *FAST, f"data.annotations={csv}", "model.class_weights=auto",
            "trainer=ddp_cpu", OVERRIDE, f"hydra.run.dir={run}", cwd=tmp_path, stdout=stdout, env=RANK_ENV,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert_ranks_identical(run)
    output = (tmp_path / "stdout.log").read_text() + done.stderr
    logged = [line.split("Class weights", 1)[1] for line in output.splitlines() if "Class weights (auto" in line]
    assert len(logged) == 2 and logged[0] == logged[1], output[-3000:]  # each rank's own, the same
    expected = expected_auto_weights(run)
    probe = json.loads((run / PROBE_FILE).read_text())
    assert probe["class_weights"] == pytest.approx(expected)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ddp"]["identical"] and metrics["loss"]["class_weights"] == pytest.approx(expected)
