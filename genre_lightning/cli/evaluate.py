"""genre-eval ckpt_path=<ckpt>: evaluate a checkpoint on the test split it was trained with (or
``split=val``, or any ``data.split_file``); the work is ``cli/evaluation.py``'s."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from genre_lightning.cli.common import CONFIG_PATH
from genre_lightning.cli.evaluation import evaluate


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
