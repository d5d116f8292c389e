"""genre-predict: top-k genres for one poster, or a CSV of probabilities for a folder, or for the
posters of a shards folder written by ``genre-data shards=<dir>`` (streamed: rows are written as
they come, and ``resume=true`` continues a stopped run)."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig

from genre_lightning.cli.config_path import CONFIG_PATH
from genre_lightning.cli.predictor_config import predictor_from_cfg
from genre_lightning.data.shards import ShardImages, is_shards_folder
from genre_lightning.inference.batch import CsvRun, ImageFiles, predict_to_csv
from genre_lightning.inference.decode import image_files
from genre_lightning.inference.explain import METHODS
from genre_lightning.inference.prediction_table import format_top_k
from genre_lightning.inference.predictor import Predictor
from genre_lightning.utils.csvio import read_csv
from genre_lightning.utils.errors import ConfigError, UserFacingError, exit_on_user_error


@exit_on_user_error
def predict(cfg: DictConfig) -> pd.DataFrame | CsvRun:
    """One file: print its top-k and return its row. A folder: write the CSV and return what was written."""
    if cfg.get("explain"):  # before any work: a bad choice is a one-line error, not a failure at the end
        if cfg.explain_genres not in ("top", "all"):
            raise ConfigError("explain_genres", cfg.explain_genres, "top or all")
        if cfg.explain_method not in METHODS:
            raise ConfigError("explain_method", cfg.explain_method, f"one of {list(METHODS)}")
    split = cfg.get("split", "all")
    if is_shards_folder(cfg.input):  # the shards' images, under the paths they were verified as
        if cfg.get("explain"):
            raise ConfigError("explain", True, "false for a shards input (the maps are drawn over image files)")
        files: ImageFiles | ShardImages = ShardImages(cfg.input, split)
        dataset_of = files.dataset
    else:
        if split != "all":
            raise ConfigError("split", split, "all unless input is a shards folder (genre-data shards=<dir>)")
        files, dataset_of = ImageFiles(cfg.input), image_files
    paths = iter(files)
    first = next(paths, None)  # the folder is walked once, lazily: only its first image is needed here
    if first is None:
        raise ConfigError("input", cfg.input, "a folder that contains image files")
    single = Path(cfg.input).is_file()
    if cfg.resume and not cfg.output_csv and not single:
        raise ConfigError("output_csv", None, "the CSV of the run to continue when resume=true")
    predictor = predictor_from_cfg(cfg)
    if single:
        row = predictor.predict_files([first], progress=False, num_workers=0).iloc[0]
        if row["error"]:
            raise UserFacingError(f"cannot predict {cfg.input}: {row['error']}")
        print(format_top_k(row, predictor.classes, cfg.top_k))
        print(backend_line(predictor), file=sys.stderr)  # stdout stays the prediction alone
        frame = row.to_frame().T
        if cfg.get("explain"):
            write_explanations(predictor, frame, Path(cfg.input).parent, Path(cfg.paths.output_dir), cfg)
        return frame
    output_csv = Path(cfg.output_csv or Path(cfg.paths.output_dir) / "predictions.csv")
    run = predict_to_csv(
        predictor,
        itertools.chain([first], paths),
        output_csv,
        resume=cfg.resume,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        prefetch=cfg.prefetch,
        dataset_of=dataset_of,
    )
    print(
        f"Wrote {run.written} predictions to {output_csv}"
        + (f" ({run.failed} unreadable, see 'error')" if run.failed else "")
        + (f"; {run.resumed} files already in it were skipped (resume=true)" if run.resumed else "")
        + (f"; {files.others} files without an image extension were not read" if files.others else "")
        + f" {backend_line(predictor)}"
    )
    if cfg.get("explain"):  # read back from the CSV: the rows were streamed, not kept
        written = read_csv(output_csv)
        write_explanations(predictor, written, Path(cfg.input), output_csv.parent, cfg)
    return run


def backend_line(predictor: Predictor) -> str:
    """``[backend onnxruntime, precision 32]``, with what the backend did besides (``backend_note``)."""
    note = f"; {predictor.backend_note}" if predictor.backend_note else ""
    return f"[backend {predictor.backend}, precision {predictor.precision}{note}]"


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
