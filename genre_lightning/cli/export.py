"""genre-export ckpt_path=<ckpt> format=onnx|torchscript: the model as a file a server can load
without this project, with its sidecar, checked against the model on real posters
(``inference/export.py``); ``precision=int8`` adds onnxruntime's int8 quantisation and prints its
top-1 agreement and accuracy against float32 on the test posters. ``format=card`` writes the model card
(a refit or fold ensemble's with the cross-validation's out-of-fold estimate: ``cv_report=<sweep>``)."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from genre_lightning.cli.common import CONFIG_PATH, show_and_save_config
from genre_lightning.inference.export import EXPORTERS, SUFFIXES, export_checkpoint
from genre_lightning.inference.model_card import write_model_card
from genre_lightning.inference.quantize import describe
from genre_lightning.results.cv_estimate import card_cv_estimate
from genre_lightning.utils.errors import ConfigError, UserFacingError, exit_on_user_error


@exit_on_user_error
def export(cfg: DictConfig) -> dict:
    """Write the artifact and its sidecar, check parity; return the sidecar (format=card: the model card)."""
    if cfg.format not in [*EXPORTERS, "card"]:
        raise ConfigError("format", cfg.format, f"one of {sorted([*EXPORTERS, 'card'])}")
    show_and_save_config(cfg, cfg.paths.output_dir, show=cfg.get("print_config", False))
    if cfg.format == "card":
        estimate = card_cv_estimate(cfg.ckpt_path, cfg.get("cv_report"))
        card = write_model_card(cfg.ckpt_path, cfg.output or Path(cfg.paths.output_dir) / "README.md", estimate)
        print(f"Wrote the model card {card}")
        return {"format": "card", "artifact": str(card)}
    output = Path(cfg.output or Path(cfg.paths.output_dir) / f"model{SUFFIXES[cfg.format]}")
    done = export_checkpoint(
        cfg.ckpt_path,
        cfg.format,
        output,
        cfg.get("parity_input"),
        cfg.parity_images,
        cfg.tolerance,
        precision=str(cfg.precision),
    )
    parity = done.sidecar["parity"]
    print(
        f"parity: max |logit difference| = {done.max_abs_logit_diff:.3e} on {parity['images']} images "
        f"({'ok' if done.passed else 'FAILED'}: tolerance {cfg.tolerance:g})"
    )
    if not done.passed:
        raise UserFacingError(
            f"the {cfg.format} export of {cfg.ckpt_path} differs from the model by {done.max_abs_logit_diff:.3e} "
            f"(>= tolerance {cfg.tolerance:g}); do not serve {output}"
        )
    print(f"Wrote {output} and {done.sidecar_path}")
    if done.int8_artifact is not None:
        print(describe(done.int8))
        print(f"Wrote {done.int8_artifact} and {done.int8_sidecar_path}")
    return done.sidecar


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
