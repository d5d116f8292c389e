"""genre-serve ckpt_path=<ckpt>: the model behind an HTTP endpoint, with a page to drop a poster on
(``inference/server.py``)."""

from __future__ import annotations

import importlib.util
import os

import hydra
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from genre_lightning.cli.common import CONFIG_PATH, show_and_save_config
from genre_lightning.cli.predictor_config import predictor_from_cfg
from genre_lightning.utils.errors import ConfigError, UserFacingError, exit_on_user_error

SERVER_MODULES = ("starlette", "uvicorn", "multipart")


@exit_on_user_error
def serve(cfg: DictConfig) -> None:
    """Load the checkpoint and serve it until SIGTERM or Ctrl+C."""
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise UserFacingError(f"genre-serve needs {', '.join(missing)}: pip install 'genre-lightning[serve]'")
    from genre_lightning.inference.server import API_KEY_ENV, ServeSettings, run_server

    options = OmegaConf.to_container(cfg.serve, resolve=True)
    unknown = sorted(set(options) - set(ServeSettings.__dataclass_fields__))
    if unknown:
        raise ConfigError(
            f"serve.{unknown[0]}", options[unknown[0]], f"one of {sorted(ServeSettings.__dataclass_fields__)}"
        )
    options["api_key"] = options.get("api_key") or os.environ.get(API_KEY_ENV) or None
    settings = ServeSettings(**options)
    shown = cfg.copy()  # config.yaml in the run folder, without the key
    shown.serve.api_key = "<set>" if settings.api_key else None
    show_and_save_config(shown, cfg.paths.output_dir, show=cfg.get("print_config", False))
    predictor = predictor_from_cfg(cfg)
    # One prediction before listening: the backend is chosen (and an ONNX export made and checked) now,
    # not while the first client waits.
    _, height, width = predictor.data_config["input_size"]
    side = predictor.min_image_side or 1  # a picture the intake's size rule accepts
    predictor.predict(Image.new("RGB", (max(width, side), max(height, side)), (128, 128, 128)))
    run_server(predictor, settings, announce=lambda line: print(line, flush=True))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="serve")
def main(cfg: DictConfig) -> None:
    serve(cfg)


if __name__ == "__main__":
    main()
