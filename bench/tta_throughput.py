"""What test-time views cost at prediction: images/s of one checkpoint's Predictor with each TTA setting.

    python bench/tta_throughput.py --checkpoint <run>/checkpoints/<best>.ckpt --posters <folder> \
        [--images 256] [--rounds 3] [--backend auto|torch|onnxruntime] [--settings flip scales ...]

The posters are decoded and preprocessed once (the checkpoint's eval transform); then, in alternating
rounds (so a loaded machine slows every setting alike), the network of each setting runs over them in
batches of 32 on the backend genre-predict would use. Prints the median images/s per setting: the
network's share of genre-predict's work (decoding is the same for every setting).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from genre_lightning.inference.predictor import Predictor

SETTINGS = {
    "none": {"hflip": False},
    "flip": {"hflip": True},
    "scales": {"hflip": True, "scales": [1.0, 1.15]},
    "center_crop": {"hflip": True, "crops": "center"},
    "three_scales": {"hflip": True, "scales": [0.85, 1.0, 1.15]},
    "five_crops": {"hflip": True, "crops": "five"},
}


def images_per_second(predictor: Predictor, batches: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            predictor.logits(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--posters", required=True, help="a folder of posters (searched recursively)")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--cache-dir", default=None, help="where the ONNX exports go (default: genre-predict's)")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    args = parser.parse_args()
    predictors = {
        name: Predictor.from_checkpoint(args.checkpoint, backend=args.backend, cache_dir=args.cache_dir, tta=tta)
        for name, tta in SETTINGS.items()
        if name in args.settings
    }
    transform = next(iter(predictors.values())).eval_transform
    paths = sorted(Path(args.posters).rglob("*.jpg"))[: args.images]
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    batches = list(images.split(32))
    for predictor in predictors.values():  # the backend is chosen (an ONNX export made) on the first batch
        predictor.logits(batches[0])
    speeds: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(args.rounds):
        for name, predictor in predictors.items():
            speeds[name].append(images_per_second(predictor, batches))
    print(f"{len(paths)} posters, batches of 32, {args.rounds} rounds, torch threads {torch.get_num_threads()}")
    print("| TTA | views | backend | images/s (median) |\n|---|---|---|---|")
    for name, predictor in predictors.items():
        median = statistics.median(speeds[name])
        print(f"| {name}: {predictor.tta.describe()} | {predictor.tta.views} | {predictor.backend} | {median:.1f} |")


if __name__ == "__main__":
    main()
