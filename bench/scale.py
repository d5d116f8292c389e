"""Scale benchmark of the data intake: scan, duplicate grouping and split at growing N, today's code
against the code before issue 27, in one run.

    python bench/scale.py                      # N = 1k, 10k, 50k posters; 1M hashes (~20 min on 2 cores)
    python bench/scale.py --sizes 200 1000 --hashes 20000 --rounds 1   # a quick look (the smoke test)
    python bench/scale.py --scan-rate-only --rounds 5   # scan files/s alone, on the real posters

Synthetic posters of realistic size (380x562 JPEGs of 30-60 KB, like the real IMDB posters), 2%
byte-identical copies (half of them filed under another genre) and 2% near copies (resized to 0.6x
and re-encoded at quality 60), are drawn once into ``--work`` (default ``outputs/bench_scale``) and
reused by later runs; the sizes are nested (hard links into one pool), so 50k costs 50k posters.

Each measurement runs in a child process of its own, so its peak RSS is its own (the decoding
workers' peak is reported apart). The previous code is the package at ``--old`` (default
6b87ac7, the commit before issue 27), extracted with ``git archive`` and put first on the child's
``PYTHONPATH`` (``--new <commit>`` does the same for today's code, so a long run is not changed by
edits to the working tree). Per N: scan (decode + hash, and for today's code reading and writing the
verification records), grouping, split, their total and peak RSS, for the previous code (4 verify
threads, its default) and today's (one process per core), then today's code again over the same
files (verification records in place). Then grouping alone on ``--hashes`` synthetic hashes
(uniform, and clustered like real posters' layouts), scan files/s of both codes alternating at the
middle size, and the growth exponent of each (the slope of log time against log N).
Timings on a shared machine move between runs: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
GENRES = ["Action", "Comedy", "Horror", "Romance"]
POSTER_SIZE = (380, 562)
EXACT_EVERY, NEAR_EVERY = 50, 50  # one exact and one near copy in every 50 posters: 2% each
FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
REAL_POSTERS = REPO.parent / "shared" / "data" / "four_genre_posters"


# ---------------------------------------------------------------------------------------------
# Synthetic posters


_TEXTURES: list[np.ndarray] = []


def texture(rng: np.random.Generator) -> np.ndarray:
    """Film grain: one of 8 noise fields drawn once per process, at a random offset (cheap to draw)."""
    if not _TEXTURES:
        bank = np.random.default_rng(12345)
        _TEXTURES.extend(
            bank.normal(0, 12, (POSTER_SIZE[1] * 2, POSTER_SIZE[0] * 2, 3)).astype(np.float32) for _ in range(8)
        )
    field = _TEXTURES[int(rng.integers(0, len(_TEXTURES)))]
    y, x = rng.integers(0, POSTER_SIZE[1]), rng.integers(0, POSTER_SIZE[0])
    return field[y : y + POSTER_SIZE[1], x : x + POSTER_SIZE[0]]


def draw_poster(index: int) -> Image.Image:
    """A poster-like picture: a two-colour gradient, a few blocks (title, figures), film grain."""
    rng = np.random.default_rng(index)
    width, height = POSTER_SIZE
    top, bottom = rng.integers(0, 256, 3).astype(np.float32), rng.integers(0, 256, 3).astype(np.float32)
    ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    pixels = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3)).copy()
    for _ in range(rng.integers(3, 8)):
        x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
        x1, y1 = x0 + rng.integers(30, width - x0 + 1), y0 + rng.integers(20, height // 2)
        pixels[y0:y1, x0:x1] = rng.integers(0, 256, 3)
    pixels += texture(rng)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def poster_bytes(index: int) -> bytes:
    """Poster ``index``: an original, or a planted copy of the poster a few places before it."""
    if index % EXACT_EVERY == EXACT_EVERY - 1:
        return poster_bytes(index - 7)  # byte-identical copy
    if index % NEAR_EVERY == NEAR_EVERY // 2:
        original = draw_poster(index - 11)
        small = original.resize((int(POSTER_SIZE[0] * 0.6), int(POSTER_SIZE[1] * 0.6)), Image.Resampling.BICUBIC)
        return encode(small, 60)
    return encode(draw_poster(index), 85)


def encode(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _write_poster(item: tuple[int, str]) -> None:
    index, path = item
    tmp = Path(path + ".tmp")
    tmp.write_bytes(poster_bytes(index))
    tmp.replace(path)


def genre_of(index: int) -> str:
    if index % 100 == 99:  # every other exact copy is filed under another genre than its original
        return GENRES[(GENRES.index(genre_of(index - 7)) + 1) % len(GENRES)]
    return GENRES[int(np.random.default_rng(index + 10**9).integers(0, len(GENRES)))]


def ensure_posters(work: Path, count: int) -> Path:
    """``work/root_<count>/<genre>/<index>.jpg``, hard links into ``work/pool`` (drawn once, resumable)."""
    pool = work / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    missing = [(i, str(pool / f"{i:07d}.jpg")) for i in range(count) if not (pool / f"{i:07d}.jpg").is_file()]
    if missing:
        started = time.perf_counter()
        with ProcessPoolExecutor(os.cpu_count()) as executor:
            list(executor.map(_write_poster, missing, chunksize=64))
        print(f"# drew {len(missing)} posters in {time.perf_counter() - started:.0f} s", flush=True)
    root = work / f"root_{count}"
    if not (root / ".complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        for genre in GENRES:
            (root / genre).mkdir(parents=True)
        for i in range(count):
            os.link(pool / f"{i:07d}.jpg", root / genre_of(i) / f"poster_{i:07d}.jpg")
        (root / ".complete").write_text("")
    return root


# ---------------------------------------------------------------------------------------------
# One measurement, in a child process (the package imported is whichever PYTHONPATH gives)


def peak_mib() -> tuple[float, float]:
    """(this process, its largest finished child) peak RSS in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def measure_intake(code: str, root: str, cache: str) -> dict:
    """Scan, group, split ``root`` with the package on the path (``code``: old or new), timed."""
    from genre_lightning.data import scan as scan_module
    from genre_lightning.data.duplicates import group_duplicates
    from genre_lightning.data.stratify import stratified_group_split

    started = time.perf_counter()
    if code == "old":
        result = scan_module.scan(GENRES, root=root, num_threads=4, min_side=32)
    else:
        from genre_lightning.data.verified import VerificationRecords, cache_file

        path = cache_file(cache, root)
        records = VerificationRecords.read(path)
        known = len(records)
        result = scan_module.scan(GENRES, root=root, min_side=32, records=records)
        if len(records) != known or not path.is_file():  # as prepare_annotations: write what is new
            records.write(path)
    scanned = time.perf_counter()
    records_sorted = sorted(result.records, key=lambda r: r.path)
    groups = group_duplicates([r.sha256 for r in records_sorted], [r.phash for r in records_sorted], 6)
    grouped = time.perf_counter()
    split = stratified_group_split([r.label for r in records_sorted], [str(g) for g in groups], FRACTIONS, 0)
    done = time.perf_counter()
    own, workers = peak_mib()
    return {
        "package": str(Path(scan_module.__file__).parent.parent),
        "files": len(result.records) + len(result.skipped),
        "groups": len(set(groups)),
        "grouping": groups,
        "split": list(split),
        "scan_s": scanned - started,
        "group_s": grouped - scanned,
        "split_s": done - grouped,
        "total_s": done - started,
        "peak_mib": own,
        "worker_peak_mib": workers,
    }


def synthetic_hashes(count: int, clustered: bool, seed: int = 0) -> tuple[list[str], list[str]]:
    """``count`` (sha256, phash) pairs with 2% exact and 2% near copies; ``clustered``: 30% of the
    hashes vary one of 2,000 shared layouts (real posters' uneven buckets)."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, (count, 128), dtype=np.uint8)
    if clustered:
        shared = rng.random(count) < 0.3
        layouts = rng.integers(0, 2, (2000, 128), dtype=np.uint8)
        bits[shared] = layouts[rng.integers(0, 2000, shared.sum())] ^ (rng.random((shared.sum(), 128)) < 0.08)
    sha = [f"{i:064x}" for i in range(count)]
    exact = rng.choice(count, count // 50, replace=False)
    for i in exact:
        source = int(rng.integers(0, count))
        sha[i], bits[i] = sha[source], bits[source]
    near = rng.choice(count, count // 50, replace=False)
    bits[near] = bits[rng.integers(0, count, len(near))]
    flips = rng.integers(0, 128, (len(near), 3))
    for column in range(3):
        bits[near, flips[:, column]] ^= 1
    return sha, [row.tobytes().hex() for row in np.packbits(bits, axis=1)]


def measure_grouping(count: int, clustered: bool) -> dict:
    from genre_lightning.data.duplicates import group_duplicates

    sha, phash = synthetic_hashes(count, clustered)
    started = time.perf_counter()
    groups = group_duplicates(sha, phash, 6)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "groups": len(set(groups)), "peak_mib": peak_mib()[0]}


def measure_scan_rate(code: str, root: str) -> dict:
    """Decode + hash files/s only (no records: the cold scan of both codes)."""
    from genre_lightning.data.scan import find_candidates, verify_all

    candidates, _ = find_candidates(root, GENRES)
    started = time.perf_counter()
    if code == "old":
        verify_all(candidates, num_threads=4, min_side=32)
    elif code == "old1":  # the reference: the previous code with one thread
        verify_all(candidates, num_threads=1, min_side=32)
    else:
        verify_all(candidates, min_side=32)
    return {"files_per_s": len(candidates) / (time.perf_counter() - started)}


def child_main(args: argparse.Namespace) -> None:
    if args.child == "intake":
        result = measure_intake(args.code, args.root, args.cache)
    elif args.child == "grouping":
        result = measure_grouping(args.count, args.clustered)
    else:
        result = measure_scan_rate(args.code, args.root)
    print("RESULT " + json.dumps(result))


# ---------------------------------------------------------------------------------------------
# The parent: children, the table


def scan_rates(root: str, rounds: int, old: Path, new: Path | None) -> None:
    """Scan files/s over ``root``: the previous code with 1 thread (the issue's 765 files/s) and 4
    (its default), and today's, alternating ``rounds`` times; each rate and ratio is the median."""
    codes = {"old1": old, "old": old, "new": new}
    rates: dict[str, list[float]] = {code: [] for code in codes}
    for _ in range(rounds):
        for code, package in codes.items():
            result = run_child("--child", "scan_rate", "--code", code, "--root", root, old=package)
            rates[code].append(result["files_per_s"])
    median = {code: float(np.median(values)) for code, values in rates.items()}
    print(f"scan files/s over {root} ({rounds} alternating rounds, medians; every round: {rates})")
    print(
        f"before, 1 thread {median['old1']:.0f}; before, 4 threads {median['old']:.0f}; "
        f"now, {os.cpu_count()} processes {median['new']:.0f}: {median['new'] / median['old1']:.2f}x the "
        f"1-thread rate, {median['new'] / median['old']:.2f}x the 4-thread rate"
    )


def old_package(work: Path, commit: str) -> Path:
    """The package as it was at ``commit``, extracted into ``work/code_<commit>``."""
    target = work / f"code_{commit}"
    if not (target / "genre_lightning" / "__init__.py").is_file():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", commit, "genre_lightning"], cwd=REPO, capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def run_child(*args: str, old: Path | None = None) -> dict:
    env = {**os.environ}
    if old is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(old), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode:
        raise RuntimeError(f"child {args} failed:\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def growth_exponent(sizes: list[int], seconds: list[float]) -> float:
    """The slope of log(seconds) against log(N): 1 is linear, 2 quadratic."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 10_000, 50_000])
    parser.add_argument("--real", default=str(REAL_POSTERS), help="real posters to compare the groups on, if present")
    parser.add_argument("--hashes", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2, help="alternating scan-rate rounds per code")
    parser.add_argument("--work", default=str(REPO / "outputs" / "bench_scale"))
    parser.add_argument("--old", default="6b87ac7", help="the commit whose code is 'before'")
    parser.add_argument("--new", default=None, help="a commit whose code is 'now' (default: this working tree)")
    parser.add_argument("--child", choices=["intake", "grouping", "scan_rate"])
    parser.add_argument("--code", choices=["old", "old1", "new"], default="new")
    parser.add_argument(
        "--scan-rate-only",
        action="store_true",
        help="only the alternating scan rates (previous code with 1 and 4 threads, today's) on --real",
    )
    parser.add_argument("--root")
    parser.add_argument("--cache")
    parser.add_argument("--count", type=int)
    parser.add_argument("--clustered", action="store_true")
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return

    work = Path(args.work)
    old = old_package(work, args.old)
    new = old_package(work, args.new) if args.new else None
    print(
        f"# bench/scale.py: {os.cpu_count()} CPUs, previous code = {args.old}, today's = {args.new or 'this tree'}; "
        f"work folder {work}",
        flush=True,
    )
    if args.scan_rate_only:
        scan_rates(args.real, args.rounds, old, new)
        return
    if Path(args.real).is_dir():  # the real posters: both codes must find the same groups and split
        cache = str(work / "cache_real")
        real = {
            code: run_child("--child", "intake", "--code", code, "--root", args.real, "--cache", cache, old=package)
            for code, package in (("old", old), ("new", new))
        }
        shutil.rmtree(work / "cache_real", ignore_errors=True)
        same = real["old"]["grouping"] == real["new"]["grouping"] and real["old"]["split"] == real["new"]["split"]
        print(
            f"# real posters ({real['new']['files']:,} files in {args.real}): {real['new']['groups']:,} groups; "
            f"same groups and split from both codes: {same}; intake {real['old']['total_s']:.1f} s before, "
            f"{real['new']['total_s']:.1f} s now (grouping {real['old']['group_s']:.3f} s before, "
            f"{real['new']['group_s']:.3f} s now)",
            flush=True,
        )
        if not same:
            raise SystemExit("the real posters' groups or split differ between the previous code and today's")
    rows, totals = [], {"old": [], "new": [], "second": []}
    for size in args.sizes:
        root = ensure_posters(work, size)
        cache = work / f"cache_{size}"
        shutil.rmtree(cache, ignore_errors=True)
        before = run_child("--child", "intake", "--code", "old", "--root", str(root), "--cache", "-", old=old)
        first = run_child("--child", "intake", "--code", "new", "--root", str(root), "--cache", str(cache), old=new)
        second = run_child("--child", "intake", "--code", "new", "--root", str(root), "--cache", str(cache), old=new)
        assert before["package"] == str(old / "genre_lightning") != first["package"], (before, first)
        same = before["grouping"] == first["grouping"] == second["grouping"] and before["split"] == first["split"]
        for name, result in (("old", before), ("new", first), ("second", second)):
            totals[name].append(result["total_s"])
            rows.append((size, name, result))
        print(f"# N={size}: same groups and split from both codes: {same}", flush=True)
        if not same:
            raise SystemExit(f"N={size}: the groups or the split differ between the previous code and today's")

    if not args.sizes:
        return
    print("\n| N | code | scan s | grouping s | split s | total s | files/s | peak RSS MiB (workers) | groups |")
    print("|---|---|---|---|---|---|---|---|---|")
    labels = {"old": f"before ({args.old})", "new": "now, first run", "second": "now, second run"}
    for size, name, r in rows:
        print(
            f"| {size:,} | {labels[name]} | {r['scan_s']:.2f} | {r['group_s']:.3f} | {r['split_s']:.3f} | "
            f"{r['total_s']:.2f} | {r['files'] / r['total_s']:.0f} | {r['peak_mib']:.0f} ({r['worker_peak_mib']:.0f}) "
            f"| {r['groups']:,} |"
        )
    sizes = args.sizes
    print()
    if len(sizes) > 1:
        for name in ("old", "new", "second"):
            print(f"growth exponent ({labels[name]}, whole intake): {growth_exponent(sizes, totals[name]):.2f}")
    for name in ("new", "second"):
        print(f"{labels[name]} / before at N={sizes[-1]:,}: {totals['old'][-1] / totals[name][-1]:.2f}x faster")
    print(f"second run / first run at N={sizes[-1]:,}: {totals['new'][-1] / totals['second'][-1]:.1f}x faster")

    middle = ensure_posters(work, sizes[len(sizes) // 2])
    rates: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(args.rounds):
        rates["old"].append(
            run_child("--child", "scan_rate", "--code", "old", "--root", str(middle), old=old)["files_per_s"]
        )
        rates["new"].append(
            run_child("--child", "scan_rate", "--code", "new", "--root", str(middle), old=new)["files_per_s"]
        )
    old_rate, new_rate = (sum(rates[c]) / len(rates[c]) for c in ("old", "new"))
    print(
        f"scan files/s at N={sizes[len(sizes) // 2]:,} ({args.rounds} alternating rounds): before (4 threads) "
        f"{old_rate:.0f}, now ({os.cpu_count()} processes) {new_rate:.0f}: {new_rate / old_rate:.2f}x"
    )

    for clustered in (False, True):
        result = run_child(
            "--child", "grouping", "--count", str(args.hashes), *(["--clustered"] if clustered else []), old=new
        )
        kind = "clustered like real layouts" if clustered else "uniform"
        print(
            f"grouping alone, {args.hashes:,} synthetic hashes ({kind}, 2% exact + 2% near copies): "
            f"{result['seconds']:.1f} s, {result['groups']:,} groups, peak RSS {result['peak_mib']:.0f} MiB"
        )
    print("# done")


if __name__ == "__main__":
    main()
