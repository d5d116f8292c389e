"""genre-train on a real Slurm cluster (``scripts/slurm-local.sh up``; CI brings it up first).

The launcher sizes follow the trainer config; a 2-job multirun runs as Slurm jobs through
``hydra/launcher=slurm``; a DDP job whose ranks are Slurm tasks is preempted with
``scancel --signal=USR2``, checkpoints, requeues itself, and resumes in the same run folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from genre_lightning.cli.common import CONFIG_MODULE
from genre_lightning.launch.slurm import register_resolvers
from tests.helpers.cli import run_entry_point
from tests.helpers.configs import FAST
from tests.helpers.optional import have_module, require
from tests.helpers.paths import REPO
from tests.helpers.recompute import single_label_metrics
from tests.helpers.slurm_pause import PAUSED_FILE

HAVE_SUBMITIT_PLUGIN = have_module("hydra_plugins.hydra_submitit_launcher")
NO_PLUGIN = 'hydra-submitit-launcher is not installed: pip install -e ".[slurm]"'
SHORT = ["trainer.limit_val_batches=2", "data.batch_size=8", "finetune=none"]


def launcher(*overrides: str) -> DictConfig:
    """The ``hydra.launcher`` node that ``genre-train -m hydra/launcher=slurm <overrides>`` submits with."""
    register_resolvers()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    return cfg.hydra.launcher


@pytest.mark.parametrize(
    "overrides, nodes, tasks, gpus, cpus",
    [
        (["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", "data.num_workers=2"], 2, 4, 4, 3),
        (["trainer=gpu", "data.num_workers=2"], 1, 1, 1, 3),
        (["trainer=ddp_cpu", "data.num_workers=0"], 1, 2, None, 1),
        (["trainer=cpu", "data.num_workers=5"], 1, 1, None, 6),
        (["trainer=ddp", "trainer.devices=[0,1]", "data.num_workers=0"], 1, 2, 2, 1),  # Lightning's list form
        (["trainer=ddp", "trainer.devices='0,1,2'", "data.num_workers=0"], 1, 3, 3, 1),  # and its string form
    ],
)
def test_slurm_tasks_and_gpus_follow_the_trainer(overrides, nodes, tasks, gpus, cpus):
    require(HAVE_SUBMITIT_PLUGIN, NO_PLUGIN)
    config = launcher(*overrides, "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30")
    assert (config.nodes, config.tasks_per_node, config.gpus_per_node, config.cpus_per_task) == (
        nodes,
        tasks,
        gpus,
        cpus,
    )
    assert (config.partition, config.timeout_min) == ("gpu", 30)
    assert config._target_.endswith("SlurmLauncher") and config.signal_delay_s > 0


def test_all_visible_gpus_cannot_be_sized_for_slurm():
    require(HAVE_SUBMITIT_PLUGIN, NO_PLUGIN)
    with pytest.raises(Exception, match=re.escape("trainer.devices=-1 is not valid: expected a number of devices")):
        launcher("trainer=ddp").tasks_per_node  # noqa: B018 (resolving is the test); trainer=ddp means devices=-1


@pytest.mark.slow
def test_a_bad_launcher_value_is_one_line_before_anything_is_submitted(poster_root: Path, tmp_path: Path):
    require(HAVE_SUBMITIT_PLUGIN, NO_PLUGIN)
    done = run_entry_point(
        "genre-train", "-m", "hydra/launcher=slurm", "trainer=ddp", f"data.root={poster_root}", cwd=tmp_path
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: trainer.devices=-1 is not valid: expected a number of devices per node for hydra/launcher=slurm "
        "or local (one task each), e.g. trainer.devices=4"
    )
    assert not (tmp_path / "outputs").exists()  # no split made, nothing submitted


# ---- on the cluster ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm() -> None:
    require(HAVE_SUBMITIT_PLUGIN, NO_PLUGIN)
    require(shutil.which("sbatch") is not None, "no Slurm here (sbatch not found): run scripts/slurm-local.sh up")
    try:
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
        up, answer = state.returncode == 0 and re.search(r"idle|mixed|allocated", state.stdout), state.stderr.strip()
    except subprocess.TimeoutExpired:
        up, answer = False, "sinfo: no answer in 15 s"
    require(bool(up), f"Slurm is not up ({answer or 'no idle node'}): run scripts/slurm-local.sh up")


@pytest.fixture
def job_name() -> Iterator[str]:
    """A name for this test's Slurm jobs; whatever is left of them is cancelled afterwards."""
    name = f"genre-test-{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["scancel", f"--name={name}"], capture_output=True)


def slurm_command(poster_root: Path, tmp_path: Path, job_name: str, *overrides: str) -> list[str]:
    return [
        str(Path(sys.executable).parent / "genre-train"),
        "-m",
        *FAST,
        *SHORT,
        f"data.root={poster_root}",
        f"paths.output_root={tmp_path / 'outputs'}",
        "hydra/launcher=slurm",
        f"hydra.launcher.name={job_name}",
        "hydra.launcher.timeout_min=10",
        *overrides,
    ]


# The jobs inherit this environment (sbatch exports it): the test helper callback is importable,
# and each 1-CPU job runs one compute thread.
JOB_ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def only_sweep(tmp_path: Path) -> Path:
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    return sweep


def scontrol_job(job_id: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout


def wait_for(condition: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.slurm
def test_two_job_multirun_runs_as_slurm_jobs(slurm, poster_root: Path, tmp_path: Path, job_name: str):
    started = time.monotonic()
    done = subprocess.run(
        slurm_command(
            poster_root,
            tmp_path,
            job_name,
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=3",
            "logger=csv",
            "seed=1,2",
        ),
        cwd=tmp_path,
        env=JOB_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(f"2-job Slurm multirun: {time.monotonic() - started:.1f}s wall")
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = only_sweep(tmp_path)
    # Two Slurm jobs (an array of two), both completed, each logged by submitit beside the sweep.
    job_ids = sorted(p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d", p.name))
    assert len(job_ids) == 2
    for job_id in job_ids:
        # (submitit reports the result as soon as it is written; Slurm marks the job COMPLETED right after)
        wait_for(lambda job_id=job_id: "JobState=COMPLETED" in scontrol_job(job_id), 60, f"job {job_id} to complete")
        assert "Job completed successfully" in (sweep / ".submitit" / job_id / f"{job_id}_0_log.out").read_text()
    for number, seed in (("0", 1), ("1", 2)):
        run = sweep / number
        assert OmegaConf.load(run / "config.yaml").seed == seed
        metrics = json.loads((run / "metrics.json").read_text())
        expected = single_label_metrics(run)
        assert metrics["test"]["test/acc"] == pytest.approx(expected["test/acc"], abs=1e-6)
        assert metrics["test"]["test/loss"] == pytest.approx(expected["test/loss"], rel=1e-4)
        assert Path(metrics["test_ckpt_path"]).parent == run / "checkpoints"
        # Both jobs were tested on the split the launcher made once, in the sweep folder.
        assert (run / "annotations.csv").read_text() == (sweep / "annotations.csv").read_text()


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.slurm
def test_preempted_ddp_job_checkpoints_requeues_and_resumes_in_its_run_folder(
    slurm, poster_root: Path, tmp_path: Path, job_name: str
):
    """Two ranks as two Slurm tasks; USR2 (what Slurm sends before a timeout) at step 6 of 12."""
    command = slurm_command(
        poster_root,
        tmp_path,
        job_name,
        "trainer=ddp_cpu",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=4",
        "logger=tensorboard",
        "+callbacks.pause._target_=tests.helpers.slurm_pause.PauseUntilSignal",
        "+callbacks.pause.step=5",
    )
    process = subprocess.Popen(
        command, cwd=tmp_path, env=JOB_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for(lambda: list(tmp_path.glob(f"outputs/train/multiruns/*/0/{PAUSED_FILE}")), 300, "training to start")
        job_id = subprocess.run(
            ["squeue", f"--name={job_name}", "-h", "-o", "%i"], capture_output=True, text=True
        ).stdout.strip()
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
        requeued = re.compile(r"JobState=(PENDING|RUNNING|COMPLETED).*Restarts=1", re.DOTALL)
        wait_for(lambda: requeued.search(scontrol_job(job_id)), 120, "the job to be requeued")
        # Slurm makes a requeued batch job wait ~2 minutes before it is eligible again; let it start now.
        if "Reason=BeginTime" in scontrol_job(job_id):
            subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)
        output, _ = process.communicate(timeout=400)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-3000:]
    wait_for(lambda: "JobState=COMPLETED" in scontrol_job(job_id), 60, f"job {job_id} to complete")
    assert "Restarts=1" in scontrol_job(job_id)

    sweep = only_sweep(tmp_path)
    run = sweep / "0"
    log = (run / "train.log").read_text()
    last = run / "checkpoints" / "last.ckpt"
    assert f"Signal SIGUSR2: saved {last} at epoch 1, global step 6; requeueing Slurm job {job_id}" in log
    assert f"Resuming from {last}" in log
    # Training went on from step 6 to the end: 3 epochs x 4 steps, each epoch validated once.
    assert torch.load(last, weights_only=True)["global_step"] == 12
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("val/acc")] == [3, 7, 11]
    metrics = json.loads((run / "metrics.json").read_text())
    assert Path(metrics["test_ckpt_path"]).parent == run / "checkpoints"
    expected = single_label_metrics(run)  # both ranks' test images, gathered
    assert metrics["test"]["test/acc"] == pytest.approx(expected["test/acc"], abs=1e-6)
    assert metrics["test"]["test/loss"] == pytest.approx(expected["test/loss"], rel=1e-4)

    # Both ranks ran as tasks of that one job (in both attempts), and wrote nothing outside it.
    task_logs = {p.name for p in (sweep / ".submitit" / job_id).glob("*_log.err")}
    assert task_logs == {f"{job_id}_0_log.err", f"{job_id}_1_log.err"}
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in (sweep / ".submitit" / job_id / f"{job_id}_1_log.err").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]
    outside = [p for p in (tmp_path / "outputs").rglob("*") if sweep not in (p, *p.parents)]
    # Beside the sweep: only the verification records that later runs on these posters reuse (data.verify_cache).
    records = [p.relative_to(tmp_path).as_posix() for p in (tmp_path / "outputs" / "cache" / "verified").glob("*.csv")]
    assert len(records) == 1
    assert sorted(p.relative_to(tmp_path).as_posix() for p in outside) == sorted(
        ["outputs/cache", "outputs/cache/verified", *records, "outputs/train", "outputs/train/multiruns"]
    )
    assert sorted(p.name for p in sweep.iterdir()) == [
        ".submitit",
        "0",
        "annotations.csv",
        "data_report.json",
        "multirun.yaml",
        "split_settings.json",
        "verified.csv",
    ]
    assert sorted(p.name for p in run.iterdir()) == [
        ".hydra",
        "annotations.csv",
        "checkpoints",
        "config.yaml",
        "confused_pairs.csv",
        "confusion_matrix.csv",
        "data_report.json",
        "figures",
        "metrics.json",
        PAUSED_FILE,  # the test's own marker
        "tensorboard",
        "test_predictions.csv",
        "train.log",
        "verified.csv",
    ]
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.slurm
def test_a_search_runs_its_fold_runs_as_slurm_jobs(slurm, poster_root: Path, tmp_path: Path, job_name: str):
    """The cross-validated search with hydra/launcher=slurm: two trials at once (n_jobs=2), every fold
    of both submitted together (no pruning), scored out of fold by the sweeping process."""
    folder = tmp_path / "search"
    done = subprocess.run(
        slurm_command(
            poster_root,
            tmp_path,
            job_name,
            "trainer.max_epochs=1",
            "logger=csv",
            "test=true",
            "data.folds=2",
            "hydra/sweeper=cv_search",
            "++hydra.sweeper.params={model.label_smoothing: 'interval(0.0, 0.2)'}",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.pruner=none",
            "hydra.sweeper.confirm=false",
            f"hydra.sweep.dir={folder}",
        ),
        cwd=tmp_path,
        env=JOB_ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((folder / "search.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["COMPLETE", "COMPLETE"]
    logs = list((folder / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2 + 2 * 2  # the baseline's two folds, then both trials' two folds in one array
    for trial in summary["trials"]:
        frames = [pd.read_csv(folder / trial["folder"] / f"fold_{k}" / "test_predictions.csv") for k in (0, 1)]
        frame = pd.concat(frames)
        probability = frame.apply(lambda row: row[f"p_{row['label']}"], axis=1)
        assert trial["value"] == pytest.approx(float(-np.log(probability.clip(1e-12, 1)).mean()), rel=1e-6)
