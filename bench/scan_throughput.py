"""Scan + verify throughput (files/s), the duplicate groups found, and perceptual-hash distances.

    python bench/scan_throughput.py [ROOT] [--workers 1 2]

ROOT defaults to ../shared/data/four_genre_posters. Each worker-process count runs the full
verification (decode every image, SHA-256, perceptual hash; no verification records, so every
file is decoded); the duplicate grouping runs once. bench/scale.py compares with the code before
issue 27 (threads) in the same run.
"""

from __future__ import annotations

import argparse
import io
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from genre_lightning.data.demo import GENRES
from genre_lightning.data.duplicates import duplicate_summary, group_duplicates, perceptual_hash
from genre_lightning.data.imageio import decode_rgb, read_rgb
from genre_lightning.data.scan import find_candidates, verify_all

DEFAULT_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "four_genre_posters"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(DEFAULT_ROOT))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--near-threshold", type=int, default=6)
    args = parser.parse_args()

    candidates, _ = find_candidates(args.root, GENRES)
    print(f"{len(candidates)} candidate files under {args.root}")
    print(f"{'workers':>8} {'seconds':>8} {'files/s':>8}")
    for workers in args.workers:
        start = time.perf_counter()
        records, skipped = verify_all(candidates, workers=workers, min_side=32)
        seconds = time.perf_counter() - start
        print(f"{workers:>8} {seconds:>8.2f} {len(candidates) / seconds:>8.1f}")

    records = sorted(records, key=lambda r: r.path)
    start = time.perf_counter()
    groups = group_duplicates([r.sha256 for r in records], [r.phash for r in records], args.near_threshold)
    summary = duplicate_summary(
        [r.path for r in records], [r.label for r in records], [r.sha256 for r in records], groups, GENRES
    )
    print(f"duplicate grouping: {time.perf_counter() - start:.3f} s; kept {len(records)}, skipped {len(skipped)}")
    print(
        f"groups: {summary['n_groups']} ({summary['n_exact_groups']} byte-identical, {summary['n_near_groups']} near), "
        f"{summary['n_conflicting_groups']} with conflicting genres, {summary['n_files_in_groups']} files"
    )
    pairs = {}
    for group in summary["groups"]:
        key = "+".join(group["labels"])
        pairs[key] = pairs.get(key, 0) + 1
    print("genre combinations:", ", ".join(f"{k}: {v}" for k, v in sorted(pairs.items())))
    hash_distances(records)


def hash_distances(records) -> None:
    """How far modified copies (resized, re-encoded) and distinct posters are, in hash bits."""
    bits = {r.path: np.unpackbits(np.frombuffer(bytes.fromhex(r.phash), dtype=np.uint8)) for r in records if r.phash}
    copies = []
    for record in records[::5]:
        original = read_rgb(record.path)
        small = original.resize((int(original.width * 0.6), int(original.height * 0.6)), Image.Resampling.BICUBIC)
        for variant, fmt, options in (
            (small, "JPEG", {"quality": 60}),
            (original, "JPEG", {"quality": 60}),
            (original.resize((120, 178)), "PNG", {}),
        ):
            buffer = io.BytesIO()
            variant.save(buffer, format=fmt, **options)
            copy_bits = np.unpackbits(
                np.frombuffer(bytes.fromhex(perceptual_hash(decode_rgb(buffer.getvalue()))), dtype=np.uint8)
            )
            copies.append(int((bits[record.path] != copy_bits).sum()))
    print("modified copies, bits from their original:", dict(sorted(Counter(copies).items())))
    unique = {r.sha256: bits[r.path] for r in records if r.phash}
    matrix = np.array(list(unique.values()))
    distances = (matrix[:, None, :] != matrix[None, :, :]).sum(-1)
    np.fill_diagonal(distances, 10_000)
    print(f"closest two distinct posters: {int(distances.min())} bits apart")


if __name__ == "__main__":
    main()
