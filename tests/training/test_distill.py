"""Knowledge distillation's losses and targets (training/distill.py) and the probe's soft-target fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genre_lightning.training.distill import TeacherTargets, check_settings, distillation_term, soft_targets
from genre_lightning.training.losses import smoothed_one_hot, soft_cross_entropy
from genre_lightning.training.module import GenreClassifier
from genre_lightning.training.probe import expand_soft_targets, fit_probe
from genre_lightning.utils.errors import ConfigError

CLASSES = ["Action", "Comedy", "Horror", "Romance"]
KEYS = [f"{i:064x}" for i in range(1, 7)]  # content hashes, as the split file gives them


def clusters(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    targets = rng.integers(0, 4, n)
    return np.eye(4, 8)[targets] * 3 + rng.normal(size=(n, 8)), targets


def test_the_mixture_target_is_onehot_at_alpha_0_and_the_softened_teacher_at_alpha_1():
    teacher = np.array([[4.0, 0.0, 0.0, 0.0], [0.0, 2.0, 1.0, 0.0]])
    targets = np.array([1, 1])
    assert np.allclose(soft_targets(teacher, targets, 0.0, 2.0), np.eye(4)[targets])
    soft = soft_targets(teacher, targets, 1.0, 2.0)
    assert np.allclose(soft, torch.softmax(torch.tensor(teacher) / 2, dim=1).numpy())
    mixed = soft_targets(teacher, targets, 0.3, 2.0)
    assert np.allclose(mixed.sum(axis=1), 1) and np.allclose(mixed, 0.7 * np.eye(4)[targets] + 0.3 * soft)


def test_the_fine_tuning_loss_is_the_weighted_sum_of_cross_entropy_and_t2_kl():
    rng = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 4, generator=rng), torch.randn(6, 4, generator=rng)
    targets = torch.tensor([0, 1, 2, 3, 0, 1])
    hard = soft_cross_entropy(student, smoothed_one_hot(targets, 4, 0.1))
    distill = TeacherTargets(KEYS, teacher.numpy(), alpha=0.25, temperature=3.0)
    p_teacher = torch.softmax(teacher / 3, dim=1)
    kl = (p_teacher * (p_teacher.log() - torch.log_softmax(student / 3, dim=1))).sum(1).mean()
    assert torch.allclose(distill.loss(hard, student, KEYS), 0.75 * hard + 0.25 * 9 * kl, atol=1e-6)
    assert float(distillation_term(teacher, teacher, 3.0)) == pytest.approx(0.0, abs=1e-6)
    # The teacher's rows follow the batch's keys, whatever their order.
    order = [5, 0, 3, 1, 4, 2]
    swapped = TeacherTargets([KEYS[i] for i in order], teacher[order].numpy(), 0.25, 3.0)
    assert torch.allclose(swapped.loss(hard, student, KEYS), distill.loss(hard, student, KEYS))


def test_a_poster_without_teacher_logits_is_refused():
    distill = TeacherTargets(KEYS[:2], np.array([[1.0, 0, 0, 0], [np.nan] * 4]), 0.5, 2.0)
    with pytest.raises(ConfigError, match="teacher logits for every training poster"):
        distill.logits(KEYS[1:2])  # the teacher could not read it


@pytest.mark.filterwarnings("ignore:You are trying to `self.log()`")  # no Trainer: the step alone
def test_the_module_trains_on_the_distillation_loss_when_a_teacher_is_attached():
    model = GenreClassifier("resnet10t", CLASSES, data_config={"input_size": (3, 32, 32)}, label_smoothing=0.1)
    images, targets = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1])
    batch = {"image": images, "target": targets, "key": KEYS, "index": torch.arange(6), "failed": []}
    teacher = torch.randn(6, 4)
    model.distill = TeacherTargets(KEYS, teacher.numpy(), alpha=0.5, temperature=2.0)
    model.eval()  # the same logits at every call (no dropout, BatchNorm statistics as they are)
    plain, logits = model._shared_step(batch, "val")[0], model(images)
    with torch.no_grad():
        hard = F.cross_entropy(logits, targets, label_smoothing=0.1)
        assert torch.allclose(plain, hard, atol=1e-5)  # validation: the filed genres only
        distilled = model._shared_step(batch, "train")[0]
        assert torch.allclose(distilled, 0.5 * hard + 0.5 * distillation_term(logits, teacher, 2.0), atol=1e-5)


def test_the_probe_fits_soft_targets_as_a_weighted_expanded_set():
    rng = np.random.default_rng(0)
    train, val = clusters(rng, 120), clusters(rng, 40)
    hard = fit_probe(train, val, [0.1], num_classes=4)
    one_hot = fit_probe((train[0], np.eye(4)[train[1]]), val, [0.1], num_classes=4)
    assert np.allclose(hard[0], one_hot[0], atol=1e-4) and np.allclose(hard[1], one_hot[1], atol=1e-4)
    x, y, w = expand_soft_targets(train[0][:2], np.array([[0.5, 0.5, 0, 0], [0, 0, 0.1, 0.9]]))
    assert y.tolist() == [0, 1, 2, 3] and w.tolist() == [0.5, 0.5, 0.1, 0.9] and (x[1] == train[0][0]).all()
    # A teacher that says Horror for every poster, alone (alpha=1): the probe says Horror too.
    always = soft_targets(np.tile([0.0, 0.0, 9.0, 0.0], (120, 1)), train[1], 1.0, 1.0)
    weight, bias, _, _ = fit_probe((train[0], always), val, [0.1, 1.0], num_classes=4)
    assert ((val[0] @ weight.T + bias).argmax(1) == 2).all()


@pytest.mark.parametrize(
    ("alpha", "temperature", "key"),
    [(1.5, 2.0, "distill.alpha"), (True, 2.0, "distill.alpha"), (0.5, 0, "distill.temperature")],
)
def test_bad_settings_are_one_line_errors(alpha, temperature, key):
    with pytest.raises(ConfigError, match=f"^{key}="):
        check_settings(alpha, temperature)
