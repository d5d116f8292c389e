"""genre-predict: top-k genres for one poster, or a CSV of probabilities for a folder."""

from __future__ import annotations

import os
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig

from genre_lightning.cli.common import CONFIG_PATH
from genre_lightning.data.scan import IMAGE_EXTENSIONS, walk_files
from genre_lightning.inference.batch import list_inputs, resolve_device
from genre_lightning.inference.explain import METHODS
from genre_lightning.inference.prediction_table import format_top_k
from genre_lightning.inference.predictor import Predictor
from genre_lightning.utils.csvio import write_csv
from genre_lightning.utils.errors import ConfigError, UserFacingError, exit_on_user_error


@exit_on_user_error
def predict(cfg: DictConfig) -> pd.DataFrame:
    if str(cfg.precision) not in ("32", "bf16"):
        raise ConfigError("precision", cfg.precision, "32 or bf16")
    if cfg.get("explain"):  # before any work: a bad choice is a one-line error, not a failure at the end
        if cfg.explain_genres not in ("top", "all"):
            raise ConfigError("explain_genres", cfg.explain_genres, "top or all")
        if cfg.explain_method not in METHODS:
            raise ConfigError("explain_method", cfg.explain_method, f"one of {list(METHODS)}")
    paths = list_inputs(cfg.input)
    if not paths:
        raise ConfigError("input", cfg.input, "a folder that contains image files")
    predictor = Predictor.from_checkpoint(
        cfg.ckpt_path, resolve_device(cfg.device), threshold=cfg.get("threshold"), channels_last=cfg.channels_last
    )
    single = Path(cfg.input).is_file()
    frame = predictor.predict_files(
        paths,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        progress=not single,
        bf16=cfg.precision == "bf16",
        freeze=cfg.freeze,
        prefetch=cfg.prefetch,
    )
    if single:
        if frame.iloc[0]["error"]:
            raise UserFacingError(f"cannot predict {cfg.input}: {frame.iloc[0]['error']}")
        print(format_top_k(frame.iloc[0], predictor.classes, cfg.top_k))
        if cfg.get("explain"):
            write_explanations(predictor, frame, Path(cfg.input).parent, Path(cfg.paths.output_dir), cfg)
        return frame
    output_csv = Path(cfg.output_csv or Path(cfg.paths.output_dir) / "predictions.csv")
    output_csv.parent.mkdir(parents=True, exist_ok=True)
    write_csv(frame, output_csv)
    if cfg.get("explain"):
        write_explanations(predictor, frame, Path(cfg.input), output_csv.parent, cfg)
    failed = int((frame["error"] != "").sum())
    others = sum(1 for p in walk_files(cfg.input) if p.suffix.lower() not in IMAGE_EXTENSIONS)
    print(
        f"Wrote {len(frame)} predictions to {output_csv}"
        + (f" ({failed} unreadable, see 'error')" if failed else "")
        + (f"; {others} files without an image extension were not read" if others else "")
    )
    return frame


def write_explanations(
    predictor: Predictor, frame: pd.DataFrame, input_root: Path, output: Path, cfg: DictConfig
) -> None:
    """An overlay PNG of each readable image's map under ``output/explanations/``, named after the
    image's path below ``input_root`` (the user's folder is only read)."""
    genres = cfg.explain_genres
    folder = output / "explanations"
    readable = [str(p) for p, error in zip(frame["file_path"], frame["error"], strict=True) if not error]
    written = 0
    for start in range(0, len(readable), cfg.batch_size):  # a chunk at a time: maps and pictures stay small
        for result in predictor.explain(readable[start : start + cfg.batch_size], genres, cfg.explain_method):
            name = folder / os.path.relpath(result.source, input_root)
            for genre in result.maps:
                suffix = ".cam.png" if genres == "top" else f".cam.{genre}.png"
                target = name.with_name(name.name + suffix)
                target.parent.mkdir(parents=True, exist_ok=True)
                result.overlay(genre).save(target)
                written += 1
    print(f"Wrote {written} {cfg.explain_method} maps to {folder}")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
