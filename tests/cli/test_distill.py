"""genre-train distill.teacher=...: a student learns from a teacher it may learn from (docs/distillation.md).

Real runs of the tests' tiny probe (experiment=probe_cpu debug=tests) on the generated posters: a
teacher, students of it, and the teachers that must be refused, each refusal one line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from genre_lightning.inference.model_card import model_card
from genre_lightning.training.module import GenreClassifier
from tests.helpers.cli import run_cli, run_entry_point
from tests.helpers.configs import FAST
from tests.helpers.posters import copy_posters

PROBE = ["experiment=probe_cpu", *FAST, "logger=csv"]


def train(base: Path, run: Path, *overrides: str, user: bool = False, multirun: bool = False, recipe=PROBE):
    """genre-train from ``base`` (the console script when ``user``), its output and return code."""
    folder = [f"hydra.sweep.dir={run}"] if multirun else [f"hydra.run.dir={run}"]
    args = ["genre-train", *(["-m"] if multirun else []), *recipe, *overrides, *folder]
    if user:
        with open(base / f"{run.name}.log", "w") as log:
            done = run_cli(*args, cwd=base, stdout=log, timeout=1800)
        return (base / f"{run.name}.log").read_text() + done.stderr, done.returncode
    done = run_entry_point(*args, cwd=base)
    return done.stdout + done.stderr, done.returncode


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fixed_genre_teacher(checkpoint: Path, genre: str, target: Path) -> Path:
    """A copy of ``checkpoint`` whose head says ``genre`` for every poster (beside it in its run folder)."""
    model = GenreClassifier.from_checkpoint(checkpoint)
    head = next(name for name, module in model.net.named_modules() if module is model.net.get_classifier())
    saved = torch.load(checkpoint, weights_only=True)
    saved["state_dict"][f"net.{head}.weight"].zero_()
    saved["state_dict"][f"net.{head}.bias"].copy_(torch.tensor([9.0 if c == genre else 0.0 for c in model.classes]))
    torch.save(saved, target)
    return target


@pytest.fixture(scope="module")
def teacher(poster_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the folder the runs start from, a teacher probe's run folder), on the students' split."""
    base = tmp_path_factory.mktemp("distill")
    copy_posters(poster_root, base / "posters")
    output, code = train(base, base / "teacher", f"data.root={base / 'posters'}", f"data.cache_dir={base / 'cache'}")
    assert code == 0, output[-3000:]
    return base, base / "teacher"


def student(base: Path, name: str, teacher_spec: Path | str, *overrides: str, user: bool = False, recipe=PROBE):
    common = [f"data.root={base / 'posters'}", f"data.cache_dir={base / 'cache'}", f"distill.teacher={teacher_spec}"]
    return train(base, base / name, *common, *overrides, user=user, recipe=recipe)


@pytest.mark.slow
def test_an_always_action_teacher_alone_makes_the_student_say_action_and_its_logits_are_cached(teacher):
    base, run = teacher
    action = fixed_genre_teacher(Path(metrics(run)["best_ckpt_path"]), "Action", run / "checkpoints" / "action.ckpt")
    output, code = student(base, "alpha1", action, "distill.alpha=1", "distill.temperature=1", user=True)
    assert code == 0, output[-3000:]
    predicted = pd.read_csv(base / "alpha1" / "test_predictions.csv")
    assert (predicted["top1"] == "Action").all() and (predicted["label"] != "Action").any()
    record = metrics(base / "alpha1")["distill"]
    assert record["sha256"] == sha256(action) and record["checkpoint"] == str(action.resolve())
    assert (record["alpha"], record["temperature"]) == (1.0, 1.0)
    train_posters = (pd.read_csv(base / "alpha1" / "annotations.csv")["split"] == "train").sum()
    assert record["logits_computed"] == record["train_posters"] == train_posters
    assert "Distilling from" in output and f"{train_posters} computed now" in output
    card = model_card(metrics(base / "alpha1")["best_ckpt_path"])
    assert f"- Distilled from teacher `{action.resolve()}` (SHA-256 `{sha256(action)[:16]}`" in card

    # The same teacher again (alpha 0: the plain probe): every logit from the cache, none computed.
    output, code = student(base, "alpha0", action, "distill.alpha=0")
    assert code == 0, output[-3000:]
    assert metrics(base / "alpha0")["distill"]["logits_computed"] == 0
    assert f"{train_posters} from the cache, 0 computed now" in output
    assert (pd.read_csv(base / "alpha0" / "test_predictions.csv")["top1"] != "Action").any()


@pytest.mark.slow
def test_a_fine_tuned_student_trains_on_the_teachers_logits(teacher):
    base, run = teacher
    best = Path(metrics(run)["best_ckpt_path"])
    recipe = [*FAST, "logger=csv", "finetune=none", "trainer.max_epochs=1", "trainer.limit_train_batches=2"]
    recipe.append("test=false")
    output, code = student(base, "finetuned", best, "distill.alpha=0.7", "distill.temperature=3", recipe=recipe)
    assert code == 0, output[-3000:]
    record = metrics(base / "finetuned")["distill"]
    assert (record["alpha"], record["temperature"], record["sha256"]) == (0.7, 3.0, sha256(best))
    assert record["logits_computed"] + record["logits_cached"] == record["train_posters"] > 0
    # Mixup has no teacher target for a mixed image: refused, in one line.
    output, code = student(base, "mixup", best, "model.mixup={mixup_alpha:0.2}", recipe=recipe)
    assert code == 2 and "error: model.mixup={'mixup_alpha': 0.2} is not valid: expected null with distill" in output


@pytest.mark.slow
def test_an_ensemble_checkpoint_teaches_through_the_predictor(teacher):
    base, run = teacher
    best = Path(metrics(run)["best_ckpt_path"])
    horror = fixed_genre_teacher(best, "Horror", run / "checkpoints" / "horror.ckpt")
    done = run_entry_point(
        "genre-ensemble", f"ckpt_paths=[{best},{horror}]", *FAST, f"hydra.run.dir={base / 'ensemble'}", cwd=base
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ensemble = base / "ensemble" / "checkpoints" / "ensemble.ckpt"
    output, code = student(base, "of_ensemble", ensemble, "distill.alpha=1", "distill.temperature=1")
    assert code == 0, output[-3000:]
    record = metrics(base / "of_ensemble")["distill"]
    assert record["teacher_backbone"] == "ensemble" and record["sha256"] == sha256(ensemble)
    assert record["logits_computed"] == record["train_posters"]
    # Half of the ensemble says Horror with 9 logits to spare: the student (alpha 1) leans to Horror.
    predicted = pd.read_csv(base / "of_ensemble" / "test_predictions.csv")
    assert (predicted["top1"] == "Horror").mean() > (predicted["label"] == "Horror").mean()


def other_genres(checkpoint: Path, target: Path) -> Path:
    saved = torch.load(checkpoint, weights_only=True)
    saved["hyper_parameters"]["classes"] = ["Action", "Comedy", "Horror", "Western"]
    torch.save(saved, target)
    return target


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "(no such file or folder)"),
        ("other_genres", "expected a teacher of this run's genres ['Action', 'Comedy', 'Horror', 'Romance']"),
        ("saw_the_test_posters", "expected a teacher that never trained on the posters this run reports on"),
        ("folder_without_runs", "this folder holds no run with a metrics.json and a checkpoint"),
    ],
)
def test_a_teacher_that_cannot_teach_this_run_is_refused_in_one_line(teacher, case: str, message: str):
    base, run = teacher
    best = Path(metrics(run)["best_ckpt_path"])
    spec, overrides = {
        "missing": (base / "nope.ckpt", []),
        "other_genres": (other_genres(best, run / "checkpoints" / "western.ckpt"), []),
        "saw_the_test_posters": (best, ["data.split_seed=1"]),  # another split: its test posters trained the teacher
        "folder_without_runs": (base / "posters", []),
    }[case]
    output, code = student(base, f"refused_{case}", spec, *overrides)
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, output[-3000:]
    assert errors[0].startswith(f"error: distill.teacher='{spec}' is not valid") and message in errors[0]


@pytest.mark.slow
@pytest.mark.long  # two 3-fold sweeps and two refusals: minutes
def test_a_cv_student_learns_each_fold_from_the_teacher_of_that_fold(poster_root: Path, tmp_path: Path):
    copy_posters(poster_root, tmp_path / "posters")
    data = [f"data.root={tmp_path / 'posters'}", f"data.cache_dir={tmp_path / 'cache'}", "data.folds=3"]
    sweep = tmp_path / "teacher"
    output, code = train(tmp_path, sweep, *data, "data.fold=0,1,2", multirun=True, user=True)
    assert code == 0, output[-3000:]
    students = tmp_path / "students"
    output, code = train(
        tmp_path, students, *data, "data.fold=0,1,2", f"distill.teacher={sweep}", multirun=True, user=True
    )
    assert code == 0, output[-3000:]
    for fold in range(3):
        record, own = metrics(students / str(fold))["distill"], metrics(students / str(fold))["cross_validation"]
        taught_by = Path(record["checkpoint"])
        teacher_run = taught_by.parent.parent
        assert record["teacher_fold"] == fold and teacher_run == (sweep / str(fold)).resolve()
        assert metrics(teacher_run)["cross_validation"] == {**own, "fold": fold}
        assert record["sha256"] == sha256(taught_by)

    # Fold 0's teacher trained on fold 1: it may not teach the student that reports fold 1.
    fold0 = Path(metrics(sweep / "0")["best_ckpt_path"])
    output, code = train(tmp_path, tmp_path / "wrong_fold", *data, "data.fold=1", f"distill.teacher={fold0}")
    assert code == 2 and "expected a teacher that never trained on the posters this run reports on" in output
    assert "teacher fold 0; this run's fold 1" in output
    # Another fold assignment (another split seed): the sweep's fold 0 is not this run's fold 0.
    output, code = train(
        tmp_path, tmp_path / "other_folds", *data, "data.fold=0", "data.split_seed=1", f"distill.teacher={sweep}"
    )
    assert code == 2 and "expected a sweep with this run's fold assignment" in output, output[-3000:]
    # A refit (data.fold=all) trained on every fold: it may teach no fold's student, and a refit student
    # has no fold for a sweep folder to pick its teacher by.
    refit = tmp_path / "refit"
    output, code = train(tmp_path, refit, *data, "data.fold=all", "finetune.probe_c_grid=[0.1]", "test=false")
    assert code == 0, output[-3000:]
    refit_checkpoint = metrics(refit).get("best_ckpt_path") or metrics(refit)["test_ckpt_path"]
    output, code = train(tmp_path, tmp_path / "by_refit", *data, "data.fold=2", f"distill.teacher={refit_checkpoint}")
    assert code == 2 and "expected a teacher that never trained on the posters this run reports on" in output
    assert "teacher fold all; this run's fold 2" in output, output[-3000:]
    output, code = train(
        tmp_path, tmp_path / "refit_student", *data, "data.fold=all", "finetune.probe_c_grid=[0.1]", "test=false",
        f"distill.teacher={sweep}",
    )  # fmt: skip
    assert code == 2 and "a sweep folder teaches a cross-validation run fold by fold" in output, output[-3000:]
