"""Every training option under real 2-process DDP (gloo on the CPU).

Every ``finetune`` option x every callback set that touches training, with Mixup, balanced
sampling, flip TTA, the frozen-feature cache (no augmentation, so it serves the frozen phases),
one training image that decodes at the scan but is corrupt by the time the run reads it, so one
rank's batch is short by an image (and odd: Mixup skips it there, the cache serves it), and every
validation image of rank 1 corrupt the same way, so rank 1 validates nothing at all and must still
take part in every collective of the validation metrics. Each job must finish, test, write
``metrics.json``, and end with bit-identical weights on both ranks (each rank writes its own
digests: tests/helpers/rank_weights.py).

Two of the jobs run as users run them: one ``genre-train -m ... trainer=ddp_cpu`` from a folder
outside the repository, stdout piped to a file; Lightning starts each job's rank 1 by re-running
the command line (``local_ddp_job``). The other ten run ``train()`` one after another in one pair
of processes (tests/helpers/ddp_jobs.py) instead of starting two new processes per job.
The launch's last job resumes the console's gradual job one epoch further, past a milestone: its
ranks must stay identical. Then ``genre-eval`` under DDP must give the single-process metrics.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from genre_lightning.cli.evaluation import evaluate
from genre_lightning.data.annotations import ANNOTATIONS_FILE
from genre_lightning.data.demo import GENRES, ensure_demo_posters
from genre_lightning.data.intake import prepare_annotations
from genre_lightning.data.settings import IntakeSettings
from tests.helpers.cli import run_cli
from tests.helpers.configs import compose_config
from tests.helpers.ddp_jobs import JOB_LOG
from tests.helpers.rank_weights import FOLDER, OVERRIDE, RANK_ENV, assert_ranks_identical
from tests.helpers.recompute import single_label_metrics

pytestmark = [pytest.mark.slow, pytest.mark.long]

FINETUNE = ["none", "head_then_all", "gradual", "linear_probe"]
CALLBACKS = ["default", "ema", "early_stopping"]
# Imbalanced on purpose (balanced sampling has something to balance): 12 / 10 / 8 / 3 posters.
# Romance keeps 2 training images: the sampler draws the broken one about 3 times an epoch.
PER_GENRE = dict(zip(GENRES, (12, 10, 8, 3), strict=True))
TINY = [
    "model=tiny",
    "model.data_config.input_size=[3,32,32]",
    "trainer=ddp_cpu",
    "trainer.max_epochs=3",
    "trainer.num_sanity_val_steps=0",
    "data.batch_size=8",
    "data.eval_batch_size=4",
    "data.augment=null",
    "data.balanced_sampling=true",
    "model.mixup={mixup_alpha:0.4,prob:1.0}",
    "model.tta_hflip=true",
    "artifacts.max_mistakes=2",  # small figures: the gather is what is under test, not the drawing
    "artifacts.samples_per_class=1",
    "print_config=false",
]


@pytest.fixture(scope="module")
def split_with_a_broken_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    """A split made while every image decoded; afterwards the smallest genre's first training image
    is truncated (it stays in the split and fails when a rank reads it), and so is every validation
    image of rank 1 (evaluation shards are strided: rank r reads rows r, r + 2, ...).
    Returns (split, the training image, rank 1's validation images)."""
    base = tmp_path_factory.mktemp("ddp_data")
    generated = ensure_demo_posters(base / "generated", per_class=max(PER_GENRE.values()), size=(40, 60), seed=3)
    posters = base / "posters"
    for genre, count in PER_GENRE.items():
        (posters / genre).mkdir(parents=True)
        for image in sorted((generated / genre).glob("*.jpg"))[:count]:
            shutil.copy(image, posters / genre / image.name)
    split = prepare_annotations(
        base / "split",
        IntakeSettings(list(GENRES), fractions={"train": 0.7, "val": 0.15, "test": 0.15}, root=posters),
    )
    rows = [line.split(",") for line in split.read_text().splitlines()[1:]]
    broken = Path(next(r[0] for r in rows if r[1] == "Romance" and r[2] == "train"))
    rank1_val = [Path(r[0]) for r in rows if r[2] == "val"][1::2]
    assert len(rank1_val) >= 2  # rank 0 keeps as many validation images
    for image in [broken, *rank1_val]:
        image.write_bytes(image.read_bytes()[:200])  # our own generated copies, never user data
    return split, broken, rank1_val


# The jobs that run through the console script, as one multirun (the sweep is over finetune).
CONSOLE = [("gradual", "default"), ("linear_probe", "default")]
FIT_CACHE_LINE = re.compile(
    r"Frozen-feature cache \(fit\): (\d+) of (\d+) image lookups served from stored features, (\d+) computed"
)


@pytest.fixture(scope="module")
def matrix(split_with_a_broken_image, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    split = split_with_a_broken_image[0]
    common = [*TINY, f"data.split_file={split}", OVERRIDE]
    cwd = tmp_path_factory.mktemp("ddp_matrix")
    sweep = cwd / "sweep"
    log = cwd / "stdout.log"
    with log.open("w") as stdout:
        done = run_cli(
            "genre-train",
            "-m",
            *common,
            f"finetune={','.join(f for f, _ in CONSOLE)}",
            f"callbacks={','.join(sorted({c for _, c in CONSOLE}))}",
            f"hydra.sweep.dir={sweep}",
            cwd=cwd,
            stdout=stdout,
            env=RANK_ENV,
            timeout=900,
        )
    (cwd / "stderr.log").write_text(done.stderr)
    assert done.returncode == 0, log.read_text()[-4000:] + done.stderr[-4000:]
    jobs = {}
    for job in sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()):
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        finetune = next(f for f in FINETUNE if f"finetune={f}\n" in overrides)
        callbacks = next(c for c in CALLBACKS if f"callbacks={c}\n" in overrides)
        jobs[(finetune, callbacks)] = job
    assert sorted(jobs) == sorted(CONSOLE)

    # The other pairs: one launch of two processes that run them one after another. Its last job
    # is a plain (not multirun) genre-train in a copy of the console's gradual job, one epoch longer:
    # it resumes from last.ckpt, where chunk 1 is unfrozen (milestone 1), and crosses milestone 3.
    launch = tmp_path_factory.mktemp("ddp_jobs")
    others = [(f, c) for f in FINETUNE for c in CALLBACKS if (f, c) not in jobs]
    spec = [
        {"run_dir": str(launch / f"{f}-{c}"), "overrides": [*common, f"finetune={f}", f"callbacks={c}"]}
        for f, c in others
    ]
    resumed = shutil.copytree(jobs[("gradual", "default")], launch / "resumed")
    shutil.rmtree(resumed / FOLDER)  # the first fit's digests: this run must write its own
    overrides = yaml.safe_load((resumed / ".hydra" / "overrides.yaml").read_text())
    assert OVERRIDE in overrides
    spec.append({"run_dir": str(resumed), "overrides": [*overrides, "trainer.max_epochs=4"]})
    (launch / "jobs.json").write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, "-m", "tests.helpers.ddp_jobs", str(launch / "jobs.json")],
        cwd=launch,
        env={**os.environ, **RANK_ENV},
        capture_output=True,
        text=True,
        timeout=1500,
    )
    (launch / "output.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr[-4000:]
    return jobs | {(f, c): launch / f"{f}-{c}" for f, c in others}


@pytest.fixture(scope="module")
def resumed(matrix) -> Path:
    """The run the launch resumed (see ``matrix``)."""
    return matrix[("none", "ema")].parent / "resumed"


def job_log(job: Path) -> str:
    """The job's log records: genre-train's train.log, or the ddp_jobs launch's job.log."""
    return (job / ("train.log" if (job / "train.log").is_file() else JOB_LOG)).read_text()


def test_the_matrix_covers_every_option_pair_and_each_job_stays_in_its_folder(matrix):
    """Lightning starts rank 1 by re-running the command line: it must run this job, not the sweep."""
    assert set(matrix) == {(f, c) for f in FINETUNE for c in CALLBACKS}
    console = [matrix[pair] for pair in CONSOLE]
    sweep = console[0].parent
    cwd = sweep.parent
    output = (cwd / "stdout.log").read_text() + (cwd / "stderr.log").read_text()
    assert output.count("MEMBER: 2/2") == len(console)  # two processes per job
    # stdout is a file: one progress line per epoch, from rank 0 only.
    assert len(re.findall(r"\] - epoch [123]/3  train/loss ", output)) == 3 * len(console)
    # Nothing outside the sweep folder: no run folder or second sweep made by a rank-1 process.
    assert sorted(p.name for p in cwd.iterdir()) == ["stderr.log", "stdout.log", "sweep"]
    for job in console:
        assert {"metrics.json", "config.yaml", "annotations.csv", "checkpoints", "train.log"} <= {
            p.name for p in job.iterdir()
        }
        assert not (job / "outputs").exists() and not (job / "lightning_logs").exists()
    # The launch of the other jobs: its two processes ran every job, each in its own folder.
    launch = matrix[("none", "ema")].parent
    others = {job.name for pair, job in matrix.items() if pair not in CONSOLE}
    assert {p.name for p in launch.iterdir()} == {"jobs.json", "output.log", "resumed", *others}
    assert (launch / "output.log").read_text().count("MEMBER: 2/2") == 1  # one launch for them all


@pytest.mark.parametrize("finetune", FINETUNE)
@pytest.mark.parametrize("callbacks", CALLBACKS)
def test_each_option_pair_finishes_tests_and_keeps_the_ranks_identical(
    matrix, split_with_a_broken_image, finetune: str, callbacks: str
):
    job = matrix[(finetune, callbacks)]
    _, broken, rank1_val = split_with_a_broken_image
    metrics = json.loads((job / "metrics.json").read_text())
    # Both ranks wrote the digests of their weights after fitting: bit-identical. The run says so too.
    assert_ranks_identical(job)
    assert metrics["ddp"]["world_size"] == 2 and metrics["ddp"]["identical"] is True, metrics["ddp"]
    # It tested the best checkpoint, over every test image once (gathered from both ranks).
    assert metrics["test_ckpt_path"] and Path(metrics["test_ckpt_path"]).is_file()
    test_rows = (job / "test_predictions.csv").read_text().splitlines()[1:]
    split_rows = (job / ANNOTATIONS_FILE).read_text().splitlines()[1:]
    assert len(test_rows) == sum(1 for r in split_rows if r.split(",")[2] == "test")
    # Its test metrics are those of its per-image probabilities against the split's labels.
    expected = single_label_metrics(job)
    assert metrics["test"]["test/acc"] == pytest.approx(expected["test/acc"], abs=1e-6)
    assert metrics["test"]["test/loss"] == pytest.approx(expected["test/loss"], rel=1e-4)
    # The broken image was read (by one rank at a time), skipped, and reported from every epoch.
    skipped = [s for s in metrics["skipped_during_run"] if s["split"] == "train"]
    assert [s["path"] for s in skipped] == [str(broken)]
    assert skipped[0]["reason"].startswith("corrupt image data")
    assert skipped[0]["times"] >= 1
    # Rank 1 validated nothing, every epoch (3 validations, no sanity check); the metrics are rank 0's.
    skipped_val = {s["path"]: s["times"] for s in metrics["skipped_during_run"] if s["split"] == "val"}
    assert skipped_val == {str(image): 3 for image in rank1_val}
    # Every epoch ran and validated.
    assert (job / "checkpoints" / "last.ckpt").is_file()
    assert set(metrics["final_val"]) >= {"val/acc", "val/loss", "val/f1_macro"}


def test_the_frozen_feature_cache_served_the_frozen_runs(matrix, split_with_a_broken_image):
    """linear_probe keeps the backbone frozen for all 3 epochs: rank 0 computes an image's features
    once, and looks them up after that. Its validation images (rank 1's are all broken) are looked
    up every epoch, so epochs 2 and 3 validate on stored features at least; Mixup's mixed training
    batches cannot use them."""
    rank1_val = split_with_a_broken_image[2]
    for callbacks in CALLBACKS:
        job = matrix[("linear_probe", callbacks)]
        (found,) = FIT_CACHE_LINE.findall(job_log(job))
        served, lookups, computed = map(int, found)
        split = pd.read_csv(job / ANNOTATIONS_FILE)
        rank0_val = int((split["split"] == "val").sum()) - len(rank1_val)
        assert served + computed == lookups, found
        assert computed <= int(split["split"].isin(["train", "val"]).sum()), found  # once per image at most
        assert served >= 2 * rank0_val > 0, (found, rank0_val)


def test_eval_under_ddp_gives_the_single_process_results(matrix, tmp_path: Path):
    """genre-eval on 2 processes: each rank predicts its shard of the test set; the metrics and the
    tables must equal a single-process evaluation's (no image lost, none counted twice)."""
    job = matrix[("head_then_all", "default")]
    ckpt = json.loads((job / "metrics.json").read_text())["test_ckpt_path"]
    single = tmp_path / "single"
    evaluate(compose_config("eval", [f"ckpt_path={ckpt}", "trainer=cpu", "print_config=false"], single))
    ddp = tmp_path / "ddp"
    done = run_cli(
        "genre-eval", f"ckpt_path={ckpt}", "trainer=ddp_cpu", "print_config=false", f"hydra.run.dir={ddp}", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MEMBER: 2/2" in done.stdout + done.stderr  # a real second process joined
    ours, theirs = (json.loads((run / "metrics.json").read_text())["test"] for run in (ddp, single))
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, abs=1e-5), name
    pd.testing.assert_frame_equal(
        pd.read_csv(ddp / "confusion_matrix.csv"), pd.read_csv(single / "confusion_matrix.csv")
    )
    ours, theirs = (pd.read_csv(run / "test_predictions.csv") for run in (ddp, single))
    assert list(ours["file_path"]) == list(theirs["file_path"])
    np.testing.assert_allclose(ours.filter(like="p_").to_numpy(), theirs.filter(like="p_").to_numpy(), atol=1e-5)


def test_a_ddp_run_resumed_past_a_milestone_keeps_the_ranks_identical(resumed: Path):
    output = (resumed / JOB_LOG).read_text()  # this run's records (train.log is the first run's)
    assert "this run folder's last checkpoint" in output
    assert "unfroze backbone chunk 2/3" in output and "unfroze backbone chunk 1/3" not in output
    assert_ranks_identical(resumed)
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert metrics["ddp"]["identical"] is True, metrics["ddp"]
    assert re.search(r"\] - epoch 4/4  train/loss ", output)
