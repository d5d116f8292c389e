"""Where a genre-train process's memory goes: resident memory (RSS) after each piece, in one process.

    python bench/memory.py [--posters DIR] [--weights FILE]

Each row is measured in this process, in the order a run builds things: the RSS before the piece
(after glibc has returned its free memory, malloc_trim), the high-water mark during it (the
kernel's VmHWM, reset first), and the RSS after it (what it keeps, and what glibc keeps of what it
freed). Defaults: the real posters and
EfficientNet-Lite0 weights of ../shared when present, else generated posters and random weights.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import io
import sys
import tempfile
import time
from pathlib import Path

from bench_table import markdown_table  # bench/bench_table.py: this script's folder is on sys.path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def rss_mib() -> float:
    return _status("VmRSS") / 1024


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_mib() -> float:
    return _status("VmHWM") / 1024


LIBC = ctypes.CDLL("libc.so.6")


class Table:
    """Rows of (what, RSS before, peak during, RSS after); before each measured piece, glibc gives its
    free memory back (malloc_trim), so "peak - before" is what the piece itself needed."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float, float]] = []

    def start(self) -> None:
        gc.collect()
        LIBC.malloc_trim(0)
        reset_peak()
        self.before = rss_mib()

    def stop(self, what: str) -> None:
        self.rows.append((what, self.before, peak_mib(), rss_mib()))

    def print(self) -> None:
        header = ("piece", "RSS before", "peak during", "RSS after", "needed (peak - before)")
        rows = [
            (what, f"{before:.0f}", f"{peak:.0f}", f"{after:.0f}", f"{peak - before:+.0f}")
            for what, before, peak, after in self.rows
        ]
        print("\n" + markdown_table(header, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posters", type=Path, default=SHARED / "data" / "four_genre_posters")
    parser.add_argument("--weights", type=Path, default=SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors")
    args = parser.parse_args()
    table = Table()
    table.start()
    import torch

    table.stop("import torch (the CUDA build's libraries)")
    table.start()
    import lightning.pytorch  # noqa: F401
    import timm  # noqa: F401

    import genre_lightning.cli.train  # noqa: F401  (everything genre-train imports)

    table.stop("import lightning, timm, torchmetrics, genre_lightning")
    from genre_lightning.data.dataset import PosterDataset, build_transforms, collate_posters
    from genre_lightning.data.demo import GENRES, ensure_demo_posters
    from genre_lightning.data.intake import prepare_annotations
    from genre_lightning.data.settings import IntakeSettings
    from genre_lightning.training.module import GenreClassifier

    workdir = Path(tempfile.mkdtemp(prefix="genre-memory-"))
    posters = args.posters if args.posters.is_dir() else ensure_demo_posters(workdir / "demo", per_class=60)
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    table.start()
    split = prepare_annotations(
        workdir, IntakeSettings(classes=GENRES, fractions=fractions, split_seed=0, root=posters)
    )
    table.stop(f"scan, verify, hash and split {posters.name}")

    weights = str(args.weights) if args.weights.is_file() else None
    table.start()
    model = GenreClassifier(
        "tf_efficientnet_lite0",
        list(GENRES),
        weights=weights,
        data_config={"input_size": (3, 288, 192), "crop_pct": 1.0, "crop_mode": "squash"},
        channels_last=True,
        drop_rate=0.2,
    )
    for module in model.net.modules():  # best_cpu keeps BatchNorm statistics frozen
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    table.stop(
        f"the model (tf_efficientnet_lite0, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)"
    )

    import pandas as pd

    frame = pd.read_csv(split)
    paths = list(frame.loc[frame["split"] == "train", "file_path"])[:32]
    train_tf, _ = build_transforms(model.data_config, {"scale": (0.6, 1.0), "hflip": 0.5})
    table.start()
    batch = collate_posters([PosterDataset(paths, [0] * len(paths), train_tf)[i] for i in range(len(paths))])
    table.stop("one decoded, augmented batch of 32 (288x192)")

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, targets = batch["image"], torch.randint(0, 4, (len(paths),))

    def step(micro: int) -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=False)
        for i in range(0, len(images), micro):
            loss = torch.nn.functional.cross_entropy(model(images[i : i + micro]), targets[i : i + micro])
            (loss * len(images[i : i + micro]) / len(images)).backward()
        optimizer.step()
        return time.perf_counter() - start

    table.start()
    step(32)
    table.stop("the first step: AdamW state and gradients stay")
    for micro in (32, 16, 8):
        table.start()
        seconds = min(step(micro) for _ in range(3))
        table.stop(f"a step of 32 images in micro-batches of {micro} ({32 / seconds:.1f} img/s)")

    model.eval()
    for size in (64, 32):
        table.start()
        with torch.inference_mode():
            model(images.repeat(size // 32, 1, 1, 1))
        table.stop(f"evaluation of a batch of {size} (no gradients)")

    from matplotlib.figure import Figure

    table.start()
    figure = Figure(figsize=(13.2, 12.5))
    for ax in figure.subplots(4, 6).flat:
        ax.imshow(torch.rand(256, 173, 3).numpy())
    figure.savefig(io.BytesIO(), format="png", dpi=100)
    table.stop("a 24-poster mistakes figure rendered to PNG")

    from torch.utils.tensorboard import SummaryWriter

    table.start()
    writer = SummaryWriter(str(workdir / "tb"))
    for step_index in range(100):
        writer.add_scalar("val/acc", 0.5, step_index)
    writer.flush()
    table.stop("a TensorBoard writer with 100 scalars")
    table.print()
    print(
        f"\n{sys.version.split()[0]}, torch {torch.__version__}, {torch.get_num_threads()} threads; workdir {workdir}"
    )


if __name__ == "__main__":
    main()
