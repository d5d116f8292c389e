"""Which ImageNet backbone and poster size carry the most genre signal? A linear probe answers
cheaply: frozen features of the eval transform, a logistic regression, validation accuracy.

    python bench/linear_probe.py                         # both local backbones, three sizes
    python bench/linear_probe.py --sizes 288x192 --backbones tf_efficientnet_lite0

Uses ../shared/data/four_genre_posters and the timm-format weights in ../shared/weights (the
split is genre-train's default: stratified 70/15/15, split seed 0, duplicates kept together).
Only train and val are read; the test split stays out of every choice made with this.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from genre_lightning.data.dataset import build_transforms
from genre_lightning.data.demo import GENRES
from genre_lightning.data.intake import prepare_annotations
from genre_lightning.data.settings import IntakeSettings
from genre_lightning.models.backbone import create_backbone, resolve_data_config
from genre_lightning.utils.csvio import read_csv

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
POSTERS = SHARED / "data" / "four_genre_posters"
WEIGHTS = SHARED / "weights"


@torch.inference_mode()
def features(backbone: str, size: tuple[int, int], paths: list[str], batch_size: int = 32) -> np.ndarray:
    """Pooled backbone features of each poster, squashed to ``size`` (height, width), no crop."""
    net = create_backbone(backbone, num_classes=0, weights=str(WEIGHTS / f"{backbone}.in1k.safetensors"))
    net = net.eval().to(memory_format=torch.channels_last)
    overrides = {"input_size": [3, *size], "crop_pct": 1.0, "crop_mode": "squash"}
    _, transform = build_transforms(resolve_data_config(net, overrides), None)
    chunks = []
    for i in range(0, len(paths), batch_size):
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[i : i + batch_size]])
        chunks.append(net(batch.contiguous(memory_format=torch.channels_last)).numpy())
    return np.concatenate(chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["tf_efficientnet_lite0", "mobilenetv2_100"])
    parser.add_argument("--sizes", nargs="+", default=["224x224", "288x192", "336x224"], help="HEIGHTxWIDTH")
    parser.add_argument("--split-file", help="an annotations.csv to reuse (default: make genre-train's split)")
    parser.add_argument("--C", type=float, default=0.1, help="inverse L2 strength of the logistic regression")
    args = parser.parse_args()
    if args.split_file:
        frame = read_csv(args.split_file)
    else:
        with tempfile.TemporaryDirectory() as workdir:
            fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
            settings = IntakeSettings(classes=GENRES, fractions=fractions, split_seed=0, root=POSTERS)
            frame = read_csv(prepare_annotations(Path(workdir), settings))
    train, val = (frame[frame["split"] == s] for s in ("train", "val"))
    print(f"{len(train)} train, {len(val)} val posters; logistic regression C={args.C} on standardised features")
    print("| backbone | size (HxW) | val accuracy | seconds |")
    print("|---|---|---|---|")
    for backbone in args.backbones:
        for text in args.sizes:
            size = tuple(int(x) for x in text.split("x"))
            start = time.perf_counter()
            # One model and one pass for both splits: train rows first, then val rows.
            x = features(backbone, size, [*train["file_path"], *val["file_path"]])
            x_train, x_val = x[: len(train)], x[len(train) :]
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=args.C, max_iter=5000))
            probe.fit(x_train, train["label"])
            accuracy = (probe.predict(x_val) == val["label"].to_numpy()).mean()
            print(f"| {backbone} | {text} | {accuracy:.1%} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
