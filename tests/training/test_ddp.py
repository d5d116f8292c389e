"""Gradual unfreezing under real 2-process DDP (CPU, gloo) trains, and keeps the ranks identical."""

import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from genre_lightning.training.finetune import backbone_layer_groups
from tests.helpers.paths import REPO


@pytest.fixture(scope="module")
def ddp_runs(poster_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both fits (with our sync, then the control without it) in one launch of the two processes."""
    out = tmp_path_factory.mktemp("ddp_runs")
    done = subprocess.run(
        [sys.executable, "-m", "tests.helpers.ddp_worker", str(poster_root), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def rank_states(out: Path) -> tuple[dict, dict]:
    return torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")


def backbone_keys(state: dict) -> list[str]:
    return [k for k in state if k.startswith("net.") and not k.startswith("net.fc.") and "num_batches" not in k]


@pytest.mark.slow
def test_unfrozen_backbone_trains_and_ranks_stay_bit_identical(ddp_runs: Path):
    rank0, rank1 = rank_states(ddp_runs / "sync")
    assert rank0["world_size"] == 2
    # The split was made once and both ranks read the same one.
    assert rank0["split_digest"] == rank1["split_digest"]
    assert (ddp_runs / "sync" / "annotations.csv").is_file()
    # (a) The backbone, frozen in epoch 0 and unfrozen at the epoch-1 milestone, changed.
    weights = [k for k in backbone_keys(rank0["end"]) if k.endswith("weight")]
    changed = [k for k in weights if not torch.equal(rank0["start"][k], rank0["end"][k])]
    assert len(changed) == len(weights), f"unchanged after unfreezing: {set(weights) - set(changed)}"
    # (b) Both ranks end with bit-identical weights, including the late-unfrozen ones.
    assert rank0["end"].keys() == rank1["end"].keys()
    different = [k for k in rank0["end"] if not torch.equal(rank0["end"][k], rank1["end"][k])]
    assert different == []


@pytest.mark.slow
def test_without_our_gradient_sync_the_ranks_drift_apart(ddp_runs: Path):
    """The control: it shows the test above can fail, and why the sync exists (Lightning #20340)."""
    rank0, rank1 = rank_states(ddp_runs / "nosync")
    backbone = [k for k in backbone_keys(rank0["end"]) if k.endswith("weight")]
    head = ["net.fc.weight", "net.fc.bias"]
    assert all(torch.equal(rank0["end"][k], rank1["end"][k]) for k in head)  # DDP syncs the head
    assert any(not torch.equal(rank0["end"][k], rank1["end"][k]) for k in backbone)


def test_layer_groups_cover_the_backbone_once():
    net = timm.create_model("resnet10t", num_classes=4)
    groups = backbone_layer_groups(net)
    ids = [id(p) for group in groups for p in group]
    assert len(ids) == len(set(ids))
    assert set(ids) | {id(p) for p in net.fc.parameters()} == {id(p) for p in net.parameters()}
