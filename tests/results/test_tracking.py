"""Experiment tracking against real trackers: a real ``mlflow server`` (SQLite backend, local
artifact folder, a free port on 127.0.0.1) and Weights & Biases in offline mode.

A 2-job sweep runs through the console script with ``logger=many`` against the server; the runs
are read back through MLflow's client and its REST API, and ``genre-report`` reads the sweep
back from the server and must give the folder report's table. A run started again in its folder
continues its MLflow run and its W&B run. A server that cannot be reached stops a run before it
trains, in one line.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.helpers.cli import run_entry_point
from tests.helpers.configs import FAST, TEST_BACKBONE
from tests.helpers.optional import have_module, require

HAVE_MLFLOW = have_module("mlflow")
HAVE_WANDB = have_module("wandb")
SHORT = ["trainer.max_epochs=2", "trainer.limit_train_batches=2", "finetune=none"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require(HAVE_MLFLOW, 'MLflow is not installed: pip install -e ".[mlflow]"')
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder}/mlflow.db",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=(folder / "server.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail("mlflow server did not start:\n" + (folder / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    yield uri
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def tracked_sweep(mlflow_server: str, poster_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``genre-train -m seed=1,2 logger=many`` against the server (in this process: other tests run
    the console script); returns the multirun folder."""
    cwd = tmp_path_factory.mktemp("tracked_sweep")
    done = run_entry_point(
        "genre-train",
        "-m",
        "seed=1,2",
        *FAST,
        *SHORT,
        f"data.root={poster_root}",
        "logger=many",
        f"logger.mlflow.tracking_uri={mlflow_server}",
        "logger.mlflow.log_model=true",
        f"hydra.sweep.dir={cwd}/sweep",
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return cwd / "sweep"


@pytest.mark.slow
def test_every_job_of_the_sweep_is_a_run_of_one_experiment_with_its_config_metrics_and_files(
    mlflow_server: str, tracked_sweep: Path
):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("train")  # named after the task
    runs = {r.data.tags["override.seed"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["1", "2"]
    for seed, run in runs.items():
        job = tracked_sweep / str(int(seed) - 1)
        metrics = json.loads((job / "metrics.json").read_text())
        config = yaml.safe_load((job / "config.yaml").read_text())
        assert json.loads((job / "tracking.json").read_text())["mlflow"]["run_id"] == run.info.run_id
        assert run.info.status == "FINISHED" and run.info.run_name == f"sweep/{job.name}"
        assert run.data.tags["sweep"] == "sweep" and f"seed={seed}" in json.loads(run.data.tags["overrides"])
        # Where it came from (utils/environment.py), as tags: the values metrics.json and the checkpoint hold.
        environment = metrics["environment"]
        assert run.data.tags["environment.packages.torch"] == environment["packages"]["torch"]
        assert run.data.tags["environment.code.commit"] == str(environment["code"]["commit"])
        assert run.data.tags["environment.cpu.count"] == str(environment["cpu"]["count"])
        # Params: the resolved config, flattened; read through the REST API this time.
        rest = get_json(f"{mlflow_server}/api/2.0/mlflow/runs/get?run_id={run.info.run_id}")["run"]
        params = {p["key"]: p["value"] for p in rest["data"]["params"]}
        assert len(params) > 50
        assert params["model.backbone"] == config["model"]["backbone"] == TEST_BACKBONE
        assert params["data.batch_size"] == str(config["data"]["batch_size"])
        assert params["seed"] == seed
        # Every metric, with its history: val/acc once per epoch, ending at the run's last value.
        history = client.get_metric_history(run.info.run_id, "val/acc")
        assert len(history) == 2
        assert history[-1].value == pytest.approx(metrics["final_val"]["val/acc"], abs=1e-6)
        assert run.data.metrics["test/acc"] == pytest.approx(metrics["test"]["test/acc"], abs=1e-6)
        # The run folder's files, the figures and (log_model=true) the best checkpoint.
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"metrics.json", "config.yaml", "annotations.csv", "test_predictions.csv", "figures"} <= names
        figures = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "figures")}
        assert figures == {p.name for p in (job / "figures").glob("*.png")} and "confusion_matrix.png" in figures
        (checkpoint,) = client.list_artifacts(run.info.run_id, "checkpoints")
        assert Path(checkpoint.path).name == Path(metrics["best_ckpt_path"]).name
        print(  # the figures a person reads with `pytest -s`
            f"MLflow run {run.info.run_id} ({run.info.run_name}): {len(params)} params, "
            f"{len(history)} val/acc points, artifacts {sorted(names - {'figures', 'checkpoints'})}, "
            f"figures {sorted(figures)}, checkpoint {Path(checkpoint.path).name}"
        )


@pytest.mark.slow
def test_genre_report_reads_the_sweep_back_from_the_server_as_from_its_folder(
    mlflow_server: str, tracked_sweep: Path, tmp_path: Path
):
    from_folder = tmp_path / "folder"
    shutil.copytree(tracked_sweep, from_folder)
    assert run_entry_point("genre-report", f"sweep_dir={from_folder}", cwd=tmp_path).returncode == 0
    done = run_entry_point(
        "genre-report",
        f"mlflow.tracking_uri={mlflow_server}",
        "mlflow.sweep=sweep",
        f"output_dir={tmp_path}/server",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ours, theirs = (pd.read_csv(folder / "report.csv") for folder in (tmp_path / "server", from_folder))
    assert ours["n"].tolist() == [2]
    pd.testing.assert_frame_equal(ours, theirs)


@pytest.mark.slow
def test_a_run_started_again_in_its_folder_continues_its_mlflow_run(
    mlflow_server: str, poster_root: Path, tmp_path: Path
):
    from mlflow import MlflowClient

    run = tmp_path / "run"
    common = [*FAST, *SHORT, f"data.root={poster_root}", "logger=mlflow", f"logger.mlflow.tracking_uri={mlflow_server}"]
    common += ["task_name=resumed", f"hydra.run.dir={run}"]
    first = run_entry_point("genre-train", *common, "trainer.max_epochs=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = json.loads((run / "tracking.json").read_text())["mlflow"]["run_id"]
    # As a requeued job does: the same folder, continued from its last.ckpt (one more epoch).
    again = run_entry_point("genre-train", *common, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run / "tracking.json").read_text())["mlflow"]["run_id"] == run_id
    client = MlflowClient(mlflow_server)
    (only,) = client.search_runs([client.get_experiment_by_name("resumed").experiment_id])
    assert only.info.run_id == run_id
    assert len(client.get_metric_history(run_id, "val/acc")) == 2  # epoch 1, then epoch 2 in the same run
    assert only.data.params["trainer.max_epochs"] == "1"  # MLflow keeps a parameter's first value


@pytest.mark.parametrize(
    "overrides, env, key",
    [
        (["logger=mlflow", "logger.mlflow.tracking_uri=http://127.0.0.1:{port}"], {}, "logger.mlflow.tracking_uri"),
        (["logger=wandb"], {"WANDB_BASE_URL": "http://127.0.0.1:{port}", "WANDB_MODE": "online"}, "logger.wandb"),
    ],
)
def test_a_tracker_that_cannot_be_reached_stops_the_run_before_training_in_one_line(
    overrides: list[str], env: dict, key: str, poster_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    require(HAVE_MLFLOW and HAVE_WANDB, 'the trackers are not installed: pip install -e ".[mlflow,wandb]"')
    port = free_port()  # nothing listens there
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(port=port))
    done = run_entry_point(
        "genre-train",
        *FAST,
        f"data.root={poster_root}",
        *(o.format(port=port) for o in overrides),
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {key}") and f"127.0.0.1:{port}" in line and "logger=tensorboard" in line
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before any training


# ----------------------------------------------------------------------------- W&B, offline
def wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` file (LevelDB log format: 32 KiB blocks of checksum, length,
    type, data), parsed with W&B's own protobuf schema."""
    from wandb.proto import wandb_internal_pb2

    data, records, pending, block = path.read_bytes(), [], b"", 32768
    position = 7  # the ':W&B' header, magic and version
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        chunk, position = data[position + 7 : position + 7 + length], position + 7 + length
        if kind in (1, 2):  # a full record, or the first part of one
            pending = chunk
        elif kind in (3, 4):  # middle and last parts
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_config_and_summary(offline_run: Path) -> tuple[str, dict, dict]:
    """The run id, config and summary that W&B wrote into an offline run's folder. W&B's service
    process writes the file on its own time: the run is complete once it holds its exit record."""
    (file,) = offline_run.glob("run-*.wandb")
    deadline = time.monotonic() + 60
    while not any(r.WhichOneof("record_type") == "exit" for r in wandb_records(file)):
        assert time.monotonic() < deadline, f"{file} has no exit record after 60 s"
        time.sleep(0.5)
    config, summary = {}, {}
    for record in wandb_records(file):
        kind = record.WhichOneof("record_type")
        if kind in ("config", "summary"):
            target = config if kind == "config" else summary
            for item in getattr(record, kind).update:  # a key, or the path of a nested one
                target[item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
    return file.stem.removeprefix("run-"), config, summary


@pytest.mark.slow
def test_wandb_offline_writes_the_config_metrics_and_files_and_a_rerun_keeps_its_id(
    poster_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    require(HAVE_WANDB, 'W&B is not installed: pip install -e ".[wandb]"')
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))  # W&B's own caches stay in the test's folder
    run = tmp_path / "run"
    common = [*FAST, *SHORT, f"data.root={poster_root}", "logger=[tensorboard,wandb]", f"hydra.run.dir={run}"]
    done = run_entry_point("genre-train", *common, "trainer.max_epochs=1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (offline,) = (run / "wandb").glob("offline-run-*")
    run_id, config, summary = wandb_config_and_summary(offline)
    metrics = json.loads((run / "metrics.json").read_text())
    assert json.loads((run / "tracking.json").read_text())["wandb"]["run_id"] == run_id
    assert config["model.backbone"] == TEST_BACKBONE and config["trainer.max_epochs"] == 1
    assert config["environment.packages.torch"] == metrics["environment"]["packages"]["torch"]
    assert summary["test/acc"] == pytest.approx(metrics["test"]["test/acc"], abs=1e-6)
    assert summary["val/acc"] == pytest.approx(metrics["final_val"]["val/acc"], abs=1e-6)
    assert {"metrics.json", "config.yaml", "annotations.csv"} <= {p.name for p in (offline / "files").iterdir()}
    # Started again in its folder, as a requeued job is: it continues from last.ckpt, in the same W&B run.
    done = run_entry_point("genre-train", *common, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "this run folder's last checkpoint" in done.stdout + done.stderr
    (second,) = set((run / "wandb").glob("offline-run-*")) - {offline}
    again_id, _, again_summary = wandb_config_and_summary(second)
    assert again_id == run_id
    metrics = json.loads((run / "metrics.json").read_text())
    assert again_summary["test/acc"] == pytest.approx(metrics["test"]["test/acc"], abs=1e-6)
