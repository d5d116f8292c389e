"""genre-ensemble: several checkpoints as one model that averages their genre probabilities.

``genre-ensemble ckpt_paths=[a.ckpt,b.ckpt]`` checks that the members were trained on one split
with the same genres, builds a ``GenreClassifier`` whose network is an ``EnsembleNet`` of theirs,
saves it as ``<run>/checkpoints/ensemble.ckpt`` beside a copy of the members' ``annotations.csv``,
and evaluates it exactly as ``genre-eval`` does (same metrics, tables and figures). The checkpoint
is a model like any other: ``genre-eval``, ``genre-predict`` and ``genre-export`` (one ONNX file,
with its parity check) take it.

Members may differ in backbone, input size and normalisation: the ensemble takes images prepared
for its first member and converts them for each other member (mean/std exactly, and a bilinear
resize when the input size differs). Members that resize posters differently (input size,
interpolation, crop) are warned about: give them one ``model.data_config`` for an exact ensemble.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning
import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf, open_dict

from genre_lightning.backbone import create_backbone, resolve_data_config
from genre_lightning.data.split_source import ANNOTATIONS_FILE, checkpoint_split
from genre_lightning.errors import ConfigError, exit_on_user_error
from genre_lightning.runtime import CONFIG_PATH

log = logging.getLogger(__name__)

ENSEMBLE_BACKBONE = "ensemble"
CHECKPOINT_NAME = "ensemble.ckpt"
# What an ensemble keeps of each member's hyper-parameters: enough to rebuild its network.
MEMBER_KEYS = ("backbone", "drop_rate", "tta_hflip")
# How a member turns a poster into pixels; mean/std differences are converted exactly, these are not.
PIXEL_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode")


class EnsembleMember(nn.Module):
    """One member network with its own preprocessing: converts an image normalised for the ensemble
    (``mean``/``std``, ``size``) to this member's, and averages its logits with the mirror image's
    when the member was trained with flip test-time augmentation."""

    def __init__(self, net: nn.Module, data_config: Mapping[str, Any], reference: Mapping[str, Any], flip: bool):
        super().__init__()
        self.net = net
        self.flip = flip
        self.size = tuple(data_config["input_size"][1:])
        self.resize = self.size != tuple(reference["input_size"][1:])
        # x_member = (x * std_ref + mean_ref - mean) / std = x * scale + shift, per channel.
        mean, std = torch.tensor(data_config["mean"]), torch.tensor(data_config["std"])
        ref_mean, ref_std = torch.tensor(reference["mean"]), torch.tensor(reference["std"])
        self.register_buffer("scale", (ref_std / std).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((ref_mean - mean) / std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.resize:
            images = nn.functional.interpolate(images, size=self.size, mode="bilinear", align_corners=False)
        images = images * self.scale + self.shift
        if self.flip:
            return (self.net(images) + self.net(images.flip(-1))) / 2
        return self.net(images)


class EnsembleNet(nn.Module):
    """The members' averaged probabilities, returned as logits: log of the mean softmax (so softmax
    gives the mean back exactly)."""

    def __init__(self, members: Sequence[Mapping[str, Any]], num_classes: int) -> None:
        super().__init__()
        nets = [create_backbone(m["backbone"], num_classes, drop_rate=m.get("drop_rate", 0.0)) for m in members]
        configs = [resolve_data_config(net, m.get("data_config")) for net, m in zip(nets, members, strict=True)]
        self.data_config = configs[0]
        self.members = nn.ModuleList(
            EnsembleMember(net, config, configs[0], bool(m.get("tta_hflip")))
            for net, config, m in zip(nets, configs, members, strict=True)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([member(images).softmax(dim=-1) for member in self.members]).mean(dim=0)
        return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()

    def get_classifier(self) -> nn.Module:  # nothing of an ensemble trains: no classifier of its own
        return nn.Identity()


def member_spec(model: Any) -> dict[str, Any]:
    """What an ensemble records of a member: its network's hyper-parameters and resolved data config."""
    spec = {key: model.hparams.get(key) for key in MEMBER_KEYS}
    spec["data_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in model.data_config.items()}
    return spec


def _split_digest(ckpt_path: str) -> str | None:
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    return (checkpoint.get("PosterDataModule") or {}).get("split_digest")


def build_ensemble(ckpt_paths: Sequence[str], output: Path) -> Path:
    """Check the members, write the ensemble checkpoint to ``output`` and the members' split
    beside its run folder; return ``output``."""
    from genre_lightning.model import GenreClassifier  # model.py builds EnsembleNet: imported late

    if isinstance(ckpt_paths, str) or len(ckpt_paths) < 2:
        raise ConfigError("ckpt_paths", ckpt_paths, "a list of at least two checkpoints, e.g. [a.ckpt,b.ckpt]")
    members = [GenreClassifier.from_checkpoint(path) for path in ckpt_paths]
    first = members[0]
    for path, member in zip(ckpt_paths, members, strict=True):
        if member.classes != first.classes:
            raise ConfigError("ckpt_paths", path, f"a checkpoint for {first.classes} (it has {member.classes})")
        if member.multilabel or member.hparams.get("members"):
            raise ConfigError("ckpt_paths", path, "a single-label genre-train checkpoint (no multi-label, no ensemble)")
    digests = {_split_digest(str(path)) for path in ckpt_paths}
    if len(digests) != 1 or None in digests:
        raise ConfigError(
            "ckpt_paths", list(ckpt_paths), "checkpoints trained on one split (train them with one data.split_file)"
        )
    for path, member in zip(ckpt_paths[1:], members[1:], strict=True):
        differs = [
            f"{k} {member.data_config.get(k)} vs {first.data_config.get(k)}"
            for k in PIXEL_KEYS
            if member.data_config.get(k) != first.data_config.get(k)
        ]
        if differs:  # its images are converted from the first member's, not decoded for it afresh
            log.warning(
                "%s resizes posters differently from %s (%s): the ensemble feeds it the first member's "
                "pixels, converted; train members with the same model.data_config for an exact ensemble",
                path, ckpt_paths[0], ", ".join(differs),
            )  # fmt: skip
    split = checkpoint_split(ckpt_paths[0])
    if split is None:
        raise ConfigError("ckpt_paths", ckpt_paths[0], f"a checkpoint with its run's {ANNOTATIONS_FILE} beside it")
    ensemble = GenreClassifier(
        backbone=ENSEMBLE_BACKBONE,
        classes=first.classes,
        members=[member_spec(m) for m in members],
        channels_last=bool(first.hparams.channels_last),
    )
    for target, member in zip(ensemble.net.members, members, strict=True):
        target.net.load_state_dict(member.net.state_dict())
    output.parent.mkdir(parents=True, exist_ok=True)
    run_folder = output.parent.parent
    shutil.copyfile(split, run_folder / ANNOTATIONS_FILE)
    checkpoint = torch.load(ckpt_paths[0], map_location="cpu", weights_only=True, mmap=True)
    torch.save(
        {
            "state_dict": ensemble.state_dict(),
            "hyper_parameters": dict(ensemble.hparams),
            "pytorch-lightning_version": lightning.__version__,
            "PosterDataModule": checkpoint.get("PosterDataModule"),
            "ensemble_members": [str(Path(p).resolve()) for p in ckpt_paths],
        },
        output,
    )
    log.info("Ensemble of %d checkpoints written to %s", len(members), output)
    return output


@exit_on_user_error
def run_ensemble(cfg: DictConfig) -> dict:
    """Build the ensemble checkpoint of ``cfg.ckpt_paths`` and evaluate it like genre-eval."""
    from genre_lightning.evaluate import evaluate

    paths = OmegaConf.to_container(cfg.ckpt_paths) if OmegaConf.is_config(cfg.ckpt_paths) else cfg.ckpt_paths
    output = build_ensemble(paths, Path(cfg.paths.output_dir) / "checkpoints" / CHECKPOINT_NAME)
    with open_dict(cfg):
        cfg.ckpt_path = str(output)
    return evaluate(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="ensemble")
def main(cfg: DictConfig) -> None:
    run_ensemble(cfg)


if __name__ == "__main__":
    main()
