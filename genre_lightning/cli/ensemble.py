"""genre-ensemble ckpt_paths=[a.ckpt,b.ckpt]: several checkpoints of one split as one model that
averages their genre probabilities (``inference/ensemble.py``), then evaluated like genre-eval."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from genre_lightning.cli.common import CONFIG_PATH
from genre_lightning.cli.evaluation import evaluate
from genre_lightning.inference.ensemble import CHECKPOINT_NAME, build_ensemble
from genre_lightning.utils.errors import exit_on_user_error


@exit_on_user_error
def ensemble(cfg: DictConfig) -> dict:
    """Build the ensemble checkpoint of ``cfg.ckpt_paths`` and evaluate it like genre-eval."""
    paths = OmegaConf.to_container(cfg.ckpt_paths) if OmegaConf.is_config(cfg.ckpt_paths) else cfg.ckpt_paths
    output = build_ensemble(paths, Path(cfg.paths.output_dir) / "checkpoints" / CHECKPOINT_NAME)
    with open_dict(cfg):
        cfg.ckpt_path = str(output)
    return evaluate(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="ensemble")
def main(cfg: DictConfig) -> None:
    ensemble(cfg)


if __name__ == "__main__":
    main()
