"""The shipped model says where it came from: the environment in its checkpoint, metrics.json and
model card, and a card whose Reproduce command, run again, makes the same model on the same split."""

from __future__ import annotations

import importlib
import importlib.util
import json
import platform
import shlex
import subprocess
from pathlib import Path

import lightning
import numpy as np
import pandas as pd
import pytest
import timm
import torch
import torchvision

import genre_lightning
from genre_lightning.utils.environment import code_version, describe_environment
from tests.helpers.cli import run_cli, run_entry_point
from tests.helpers.paths import REPO

RECIPE = [
    "debug=tests",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "data.batch_size=16",
    "seed=7",
    "model.optimizer.lr=0.003",
    "finetune=none",
    "logger=csv",
]


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()


def train(cwd: Path, run: Path, *overrides: str) -> dict:
    done = run_cli("genre-train", *overrides, f"hydra.run.dir={run}", cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((run / "metrics.json").read_text())


def reproduce_command(card: str) -> list[str]:
    block = card.split("## Reproduce", 1)[1]
    (line,) = [line for line in block.splitlines() if line.startswith("genre-train ")]
    return shlex.split(line)


@pytest.mark.slow
def test_the_environment_is_recorded_and_the_cards_command_makes_the_same_model(poster_root: Path, tmp_path: Path):
    original = tmp_path / "original"
    metrics = train(tmp_path, original, f"data.root={poster_root}", *RECIPE)
    checkpoint = torch.load(metrics["best_ckpt_path"], weights_only=True)
    recorded = checkpoint["genre_lightning"]
    env = recorded["environment"]
    assert recorded["program"] == "genre-train" and recorded["overrides"] == [f"data.root={poster_root}", *RECIPE]
    assert metrics["environment"] == env  # metrics.json and the checkpoint agree
    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__}
    versions |= {
        "lightning": lightning.__version__,
        "numpy": np.__version__,
        "genre-lightning": genre_lightning.__version__,
    }
    if importlib.util.find_spec("onnxruntime"):
        versions["onnxruntime"] = importlib.import_module("onnxruntime").__version__
    assert {k: env["packages"][k] for k in versions} == versions
    assert env["python"] == platform.python_version() and env["cpu"]["count"] > 0
    # The tests run from the repository checkout (an editable install): its commit, and whether it had changes.
    assert env["code"]["commit"] == git("rev-parse", "HEAD")
    assert env["code"]["dirty"] == bool(git("status", "--porcelain", "--untracked-files=no"))
    assert env["gpus"] == [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]

    done = run_entry_point("genre-export", f"ckpt_path={metrics['best_ckpt_path']}", "format=card",
                           f"output={tmp_path / 'README.md'}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    card = (tmp_path / "README.md").read_text()
    assert f"- Code: git commit `{env['code']['commit']}`" in card
    assert f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}" in card
    assert f"- Python {platform.python_version()} on {platform.platform()}" in card

    program, *overrides = reproduce_command(card)
    assert program == "genre-train"
    assert overrides == [
        f"data.root={poster_root}",
        *RECIPE,
        f"data.split_file={(original / 'annotations.csv').resolve()}",
    ]
    again = tmp_path / "again"
    reproduced = train(tmp_path, again, *overrides)
    assert pd.read_csv(again / "annotations.csv").equals(pd.read_csv(original / "annotations.csv"))
    # Same seed, same split, same threads, on the CPU: bit for bit the same model and test metrics.
    assert reproduced["test"] == metrics["test"]
    weights = torch.load(reproduced["best_ckpt_path"], weights_only=True)["state_dict"]
    assert all(torch.equal(weights[k], checkpoint["state_dict"][k]) for k in weights)


def test_the_code_version_is_the_checkouts_commit_and_says_when_it_has_changes(tmp_path: Path):
    package = tmp_path / "checkout" / "genre_lightning"
    package.mkdir(parents=True)
    (package / "module.py").write_text("A = 1\n")
    checkout = package.parent
    for args in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"]):
        subprocess.run(["git", "-C", str(checkout), *args], check=True, capture_output=True)
    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    clean = code_version(package)
    assert clean == {"source": f"git checkout {checkout}", "commit": head.stdout.strip(), "dirty": False,
                     "changed_files": 0}  # fmt: skip
    (package / "module.py").write_text("A = 2\n")
    (package / "notes.txt").write_text("untracked: not code the package runs\n")
    changed = code_version(package)
    assert changed["commit"] == clean["commit"] and changed["dirty"] is True and changed["changed_files"] == 1


def test_an_installed_package_has_no_commit_and_says_so(tmp_path: Path):
    package = tmp_path / "site-packages" / "genre_lightning"
    package.mkdir(parents=True)
    assert code_version(package) == {"source": "installed package", "commit": None, "dirty": None}
    assert describe_environment({"code": code_version(package)})[0] == (
        "- Code: installed package (no git commit recorded)"
    )
