"""genre-predict: top-k genres for one poster, or a CSV of probabilities for a folder."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from genre_lightning.csvio import write_csv
from genre_lightning.data.dataset import PosterDataset, build_transforms, collate_posters
from genre_lightning.data.scan import IMAGE_EXTENSIONS, walk_files
from genre_lightning.errors import ConfigError, UserFacingError, exit_on_user_error
from genre_lightning.model import GenreClassifier
from genre_lightning.progress import Progress
from genre_lightning.results.tables import probability_frame
from genre_lightning.runtime import CONFIG_PATH

log = logging.getLogger(__name__)

Batch = TypeVar("Batch")


def list_inputs(path: str | Path) -> list[str]:
    """One image file, or every image file under a folder (sorted, sub-folders included)."""
    path = Path(path)
    if path.is_file():
        return [str(path)]
    if path.is_dir():

        def unreadable_folder(error: OSError) -> None:  # os.walk would skip it without a word
            log.warning("Cannot read folder %s (%s): its images are not predicted", error.filename, error.strerror)

        return [str(p) for p in walk_files(path, on_error=unreadable_folder) if p.suffix.lower() in IMAGE_EXTENSIONS]
    raise ConfigError("input", str(path), "an existing image file or folder of images")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prefetched(batches: Iterable[Batch]) -> Iterator[Batch]:
    """Yield ``batches`` while one background thread prepares the next: JPEG decoding and resizing
    release the GIL, so decoding batch i + 1 overlaps the model's work on batch i, without the
    process start-up and tensor copies of DataLoader workers (docs/PERFORMANCE.md)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        iterator = iter(batches)
        pending = pool.submit(next, iterator, None)
        while (batch := pending.result()) is not None:
            pending = pool.submit(next, iterator, None)
            yield batch


def predict_files(
    model: GenreClassifier,
    paths: list[str],
    batch_size: int = 32,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    channels_last: bool = True,
    bf16: bool = False,
    freeze: bool = False,
    prefetch: bool = True,
) -> pd.DataFrame:
    """Probabilities for each file: ``file_path, top1, p_top1, p_<class>..., error`` (a multi-label
    model's also ``predicted``: every genre above its decision threshold, joined by ``|``).

    A file that cannot be decoded gets an ``error`` and empty probabilities; it never stops the run.
    ``channels_last``, ``freeze`` (a frozen TorchScript trace: BatchNorm folded into the convolutions),
    ``bf16`` (autocast) and ``prefetch`` (decode the next batch in a thread while the model runs; with
    ``num_workers`` > 0 the loader's workers do that instead) are the speed settings measured in
    docs/PERFORMANCE.md.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    if channels_last:
        model.set_channels_last(True)
    _, eval_transform = build_transforms(model.data_config, None)
    dataset = PosterDataset(paths, [0] * len(paths), eval_transform)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_posters)
    probabilities = torch.full((len(paths), len(model.classes)), float("nan"))
    errors = [""] * len(paths)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None
    with (
        torch.inference_mode(),
        autocast,
        Progress(len(paths) if progress else 0, "predict", "images") as bar,
    ):
        for batch in prefetched(loader) if prefetch and num_workers == 0 else loader:
            for index, reason in batch["failed"]:
                errors[index] = reason
            if batch["index"].numel():
                images = batch["image"].to(device)
                if forward is None:
                    forward = frozen_forward(model, images) if freeze and not bf16 else model
                probabilities[batch["index"]] = model.probabilities(forward(images).float()).cpu()
            bar.advance(batch["index"].numel() + len(batch["failed"]))
    thresholds = model.decision_thresholds().cpu() if model.multilabel else None
    return probability_frame(paths, probabilities, model.classes, errors, thresholds)


def frozen_forward(model: GenreClassifier, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A frozen TorchScript trace of the model for inference: BatchNorm folded into the convolutions
    (docs/PERFORMANCE.md). Falls back to the model itself if tracing fails or changes the logits."""
    memory_format = torch.channels_last if model.hparams.channels_last else torch.contiguous_format
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notices
            traced = torch.jit.trace(model.inference_net(), example[:2].contiguous(memory_format=memory_format))
            frozen = torch.jit.freeze(traced)

            def forward(images: torch.Tensor) -> torch.Tensor:
                return frozen(images.contiguous(memory_format=memory_format))

            if (forward(example) - model(example)).abs().max().item() <= 1e-4:
                return forward
        log.warning("The frozen trace changed the logits; predicting with the model as it is")
    except Exception as err:  # a model TorchScript cannot trace: eager is always correct
        log.warning("Could not freeze the model for inference (%s); predicting with the model as it is", err)
    return model


def format_top_k(row: pd.Series, classes: list[str], k: int) -> str:
    if row["error"]:
        return f"{row['file_path']}: cannot predict ({row['error']})"
    ranked = sorted(classes, key=lambda c: -row[f"p_{c}"])[:k]
    lines = [row["file_path"]] + [f"  {i + 1}. {c:<10} {row[f'p_{c}']:.3f}" for i, c in enumerate(ranked)]
    if "predicted" in row:  # multi-label: every genre above its threshold
        lines.append(f"  genres: {row['predicted'].replace('|', ', ') or '(none above its threshold)'}")
    return "\n".join(lines)


@exit_on_user_error
def predict(cfg: DictConfig) -> pd.DataFrame:
    if str(cfg.precision) not in ("32", "bf16"):
        raise ConfigError("precision", cfg.precision, "32 or bf16")
    paths = list_inputs(cfg.input)
    if not paths:
        raise ConfigError("input", cfg.input, "a folder that contains image files")
    model = GenreClassifier.from_checkpoint(cfg.ckpt_path)
    if cfg.get("threshold") is not None:
        model.set_threshold(cfg.threshold)
    single = Path(cfg.input).is_file()
    frame = predict_files(
        model,
        paths,
        cfg.batch_size,
        cfg.num_workers,
        resolve_device(cfg.device),
        progress=not single,
        channels_last=cfg.channels_last,
        bf16=cfg.precision == "bf16",
        freeze=cfg.freeze,
        prefetch=cfg.prefetch,
    )
    if single:
        if frame.iloc[0]["error"]:
            raise UserFacingError(f"cannot predict {cfg.input}: {frame.iloc[0]['error']}")
        print(format_top_k(frame.iloc[0], model.classes, cfg.top_k))
    else:
        output_csv = Path(cfg.output_csv or Path(cfg.paths.output_dir) / "predictions.csv")
        output_csv.parent.mkdir(parents=True, exist_ok=True)
        write_csv(frame, output_csv)
        failed = int((frame["error"] != "").sum())
        others = sum(1 for p in walk_files(cfg.input) if p.suffix.lower() not in IMAGE_EXTENSIONS)
        print(
            f"Wrote {len(frame)} predictions to {output_csv}"
            + (f" ({failed} unreadable, see 'error')" if failed else "")
            + (f"; {others} files without an image extension were not read" if others else "")
        )
    return frame


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
