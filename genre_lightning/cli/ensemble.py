"""genre-ensemble ckpt_paths=[a.ckpt,b.ckpt]: several checkpoints of one split (or the fold runs of one
cross-validation) as one model that averages their calibrated genre probabilities
(``training/ensemble.py``), then evaluated like genre-eval."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from genre_lightning.cli.common import CONFIG_PATH, show_and_save_config, write_json
from genre_lightning.cli.evaluation import evaluate
from genre_lightning.models.checkpoint_io import datamodule_state, read_checkpoint
from genre_lightning.results.tracking import job_overrides
from genre_lightning.training.ensemble import CHECKPOINT_NAME, build_ensemble, ensemble_summary
from genre_lightning.utils.environment import environment
from genre_lightning.utils.errors import exit_on_user_error

log = logging.getLogger(__name__)


@exit_on_user_error
def ensemble(cfg: DictConfig) -> dict:
    """Build the ensemble checkpoint of ``cfg.ckpt_paths`` and evaluate it like genre-eval."""
    paths = OmegaConf.to_container(cfg.ckpt_paths) if OmegaConf.is_config(cfg.ckpt_paths) else cfg.ckpt_paths
    output_dir = Path(cfg.paths.output_dir)
    env = environment()
    record = {"environment": env, "program": "genre-ensemble", "overrides": job_overrides()}
    output = build_ensemble(paths, output_dir / "checkpoints" / CHECKPOINT_NAME, provenance=record)
    with open_dict(cfg):
        cfg.ckpt_path = str(output)
    checkpoint = read_checkpoint(output)
    summary = {**ensemble_summary(checkpoint), "environment": env}
    if datamodule_state(checkpoint).get("test_posters") == 0:
        # A fold ensemble without a fixed test part: every poster trained one of its members.
        show_and_save_config(cfg, output_dir, show=cfg.get("print_config", True))
        results = {"test": None, "test_ckpt_path": None, **summary}
        results["not_tested"] = (
            "every poster trained a member of this fold ensemble (data.cv_test_fraction=0): there is no poster "
            "left to test it on; its out-of-fold estimate is the cross-validation's (genre-report)"
        )
        write_json(output_dir / "metrics.json", results)
        log.warning("Not tested: %s. Checkpoint: %s", results["not_tested"], output)
        return results
    return evaluate(cfg, summary)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="ensemble")
def main(cfg: DictConfig) -> None:
    ensemble(cfg)


if __name__ == "__main__":
    main()
