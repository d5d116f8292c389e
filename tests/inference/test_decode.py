"""The decode pool: batches in input order, decoded by its threads a bounded number of images ahead,
with the training pipeline's pixels, and unreadable files reported at their positions."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from genre_lightning.data.dataset import build_transforms
from genre_lightning.data.imageio import read_rgb
from genre_lightning.inference.decode import decode_workers, decoded_batches

CONFIG = {"input_size": (3, 32, 24), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3}


@pytest.fixture(scope="module")
def files(poster_root: Path) -> list[str]:
    return sorted(str(p) for p in poster_root.rglob("*.jpg"))[:22]


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_come_in_order_with_the_training_pixels_and_failures_at_their_positions(
    files: list[str], tmp_path: Path, workers: int
):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    paths = [*files[:5], str(broken), *files[5:]]
    _, transform = build_transforms(CONFIG, None)
    batches = list(decoded_batches(iter(paths), transform, batch_size=4, workers=workers))
    assert [b.paths for b in batches] == [paths[i : i + 4] for i in range(0, len(paths), 4)]
    assert batches[1].failed == [(1, "not an image: PIL cannot identify the format")]
    assert batches[1].index.tolist() == [0, 2, 3] and len(batches[-1].paths) == len(paths) % 4
    readable = [p for p in paths if p != str(broken)]
    images = torch.cat([b.images for b in batches])
    expected = torch.stack([transform(read_rgb(p)) for p in readable])  # decoded one by one, as training does
    assert torch.equal(images, expected)


def test_the_pool_reads_the_input_lazily_and_decodes_only_a_few_batches_ahead(files: list[str]):
    taken, decoded_in = [], set()
    _, transform = build_transforms(CONFIG, None)

    def source():
        for path in files:
            taken.append(path)
            yield path

    def recording(image):
        decoded_in.add(threading.current_thread().name)
        return transform(image)

    batches = decoded_batches(source(), recording, batch_size=3, workers=2, ahead=2)
    first = next(batches)
    # The batch handed out and two more in flight: 9 of the 22 files read from the input, no more.
    assert len(first.paths) == 3 and len(taken) == 9
    rest = list(batches)
    assert len(taken) == len(files) and sum(len(b.paths) for b in [first, *rest]) == len(files)
    assert decoded_in and all(name.startswith("decode") for name in decoded_in)


def test_decode_threads_are_the_cores_the_model_leaves_free_and_at_least_one():
    assert decode_workers(cores=8, forward_threads=6) == 2
    assert decode_workers(cores=2, forward_threads=2) == 1
    assert decode_workers(cores=4, forward_threads=0) == 4  # the model runs on a GPU
