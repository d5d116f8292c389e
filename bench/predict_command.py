"""genre-predict as a user runs it: the console command, end to end, in a new process each time.

    python bench/predict_command.py --checkpoint <probe_cpu run>/checkpoints/<best>.ckpt \\
        --posters ../shared/data/four_genre_posters --repeats 3

Measures, alternating the compared runs so drifts in machine load hit them alike:

* one poster: the first call on a checkpoint not exported yet (a new, empty ONNX cache each time)
  against a warm call (the cache filled), wall time of the whole command, medians;
* a folder: the warm command on every poster, its start-up measured separately as the same command
  on a folder of one poster; images/s = (N - 1) / (time on N - time on 1), against a plain PyTorch
  eval loop in this process (the checkpoint's own network and flip TTA, batches of 32 decoded in the
  loop, ``no_grad``); the command's top-1 against the loop's, poster by poster;
* optionally (``--first-folder``) the first call on the folder: ``onnx_export=background`` (torch
  until the background export is ready) against ``wait`` (export first).

``--pythonpath DIR`` runs the command's code from another checkout (a ``git archive`` of an older
commit with ``genre_lightning/conf`` linked to its ``conf/``): the before/after comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_table import markdown_table  # bench/bench_table.py: this script's folder is on sys.path
from PIL import Image

from genre_lightning.inference.batch import list_inputs
from genre_lightning.inference.predictor import Predictor
from genre_lightning.utils.csvio import read_csv


class Command:
    """The genre-predict console script of this environment, optionally on another checkout's code."""

    def __init__(self, checkpoint: str, workdir: Path, pythonpath: str | None, background: bool) -> None:
        self.checkpoint, self.workdir, self.background = checkpoint, workdir, background
        self.env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
        self.runs = 0

    def __call__(self, input_path: Path | str, cache: Path, *extra: str) -> tuple[float, subprocess.CompletedProcess]:
        self.runs += 1
        command = [
            str(Path(sys.executable).parent / "genre-predict"),
            f"ckpt_path={self.checkpoint}",
            f"input={input_path}",
            f"cache_dir={cache}",
            f"hydra.run.dir={self.workdir / f'run{self.runs}'}",
            *extra,
        ]
        started = time.perf_counter()
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, cwd=self.workdir)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        return seconds, done


def wait_for_export(cache: Path, timeout: float = 900) -> float:
    """Seconds until a background export has written its record (0 if it is there)."""
    started = time.perf_counter()
    while not list(cache.glob("*/float32.json")):
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"no export in {cache} after {timeout:.0f} s")
        time.sleep(0.5)
    return time.perf_counter() - started


def plain_loop(paths: list[str], network: torch.nn.Module, transform, classes: list[str]) -> tuple[float, list[str]]:
    """A notebook's eval loop: batches of 32 decoded in the loop, ``no_grad``; images/s and top-1."""
    network.eval()
    top1: list[str] = []
    started = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(paths), 32):
            images = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[i : i + 32]])
            top1 += [classes[j] for j in network(images).softmax(dim=-1).argmax(dim=-1).tolist()]
    return len(paths) / (time.perf_counter() - started), top1


def median_of(values: list[float], unit: str = "s") -> str:
    return f"{statistics.median(values):.1f} {unit} ({', '.join(f'{v:.1f}' for v in values)})"


def single_poster(command: Command, poster: str, workdir: Path, repeats: int) -> list[tuple[str, str, str]]:
    """First call (an empty cache) against a warm one, alternating."""
    warm_cache = workdir / "warm-cache"
    command(poster, warm_cache, "onnx_export=wait" if command.background else "backend=auto")  # fill it
    first, warm, exports, backends = [], [], [], set()
    for i in range(repeats):
        cache = workdir / f"first-cache-{i}"
        seconds, done = command(poster, cache)
        first.append(seconds)
        backends.add(next((line for line in done.stderr.splitlines() if line.startswith("[backend")), "")[:40])
        if command.background:  # the export it left runs on: wait, so it does not load the next runs
            exports.append(seconds + wait_for_export(cache))
        warm.append(command(poster, warm_cache)[0])
    ratios = [f / w for f, w in zip(first, warm, strict=True)]
    rows = [
        ("one poster: first call on a new checkpoint (empty cache)", median_of(first), ""),
        ("one poster: warm call (cache filled)", median_of(warm), ""),
        ("one poster: first / warm", f"{statistics.median(ratios):.2f}x", ", ".join(f"{r:.2f}" for r in ratios)),
    ]
    if exports:
        rows.append(("one poster: background export ready after (from the call's start)", median_of(exports), ""))
    rows.append(("one poster: first call's backend line", "; ".join(sorted(b for b in backends if b)) or "-", ""))
    return rows


def folder_rate(command: Command, posters: Path, workdir: Path, repeats: int) -> list[tuple[str, str, str]]:
    """The warm command on the folder and on one poster of it; the plain loop; top-1 compared."""
    paths = list_inputs(posters)
    one = workdir / "one"
    one.mkdir(exist_ok=True)
    (one / Path(paths[0]).name).write_bytes(Path(paths[0]).read_bytes())
    cache = workdir / "folder-cache"
    command(one, cache, *(["onnx_export=wait"] if command.background else []))  # the export, once
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    reference = Predictor.from_checkpoint(command.checkpoint, backend="torch", channels_last=False)
    csv = workdir / "folder.csv"
    starts, totals, plains, rates, ratios = [], [], [], [], []
    plain_top1: list[str] = []
    for _ in range(repeats):
        plain, plain_top1 = plain_loop(paths, reference.network, reference.eval_transform, reference.classes)
        start = command(one, cache, f"output_csv={workdir / 'one.csv'}")[0]
        total = command(posters, cache, f"output_csv={csv}")[0]
        rate = (len(paths) - 1) / (total - start)
        starts.append(start), totals.append(total), plains.append(plain), rates.append(rate)
        ratios.append(rate / plain)
    written = read_csv(csv)
    same = (written["top1"] == plain_top1).mean() if list(written["file_path"]) == paths else float("nan")
    return [
        (
            f"folder: plain eval loop (torch, flip TTA as the checkpoint, batch 32), {len(paths)} posters",
            median_of(plains, "img/s"),
            "1.00x",
        ),
        ("folder: genre-predict start-up (the command on a folder of 1 poster)", median_of(starts), ""),
        (f"folder: genre-predict on {len(paths)} posters, whole command", median_of(totals), ""),
        (
            "folder: genre-predict images/s, start-up subtracted: (N - 1) / (time on N - time on 1)",
            median_of(rates, "img/s"),
            f"{statistics.median(ratios):.2f}x ({', '.join(f'{r:.2f}' for r in ratios)})",
        ),
        ("folder: same top-1 as the plain loop", f"{same:.1%} of {len(paths)}", ""),
    ]


def first_folder(command: Command, posters: Path, workdir: Path) -> list[tuple[str, str, str]]:
    """The first call on the folder, an empty cache each: background (torch until exported) against wait."""
    rows = []
    for mode in ("background", "wait"):
        cache = workdir / f"first-folder-{mode}"
        seconds, done = command(posters, cache, f"onnx_export={mode}", f"output_csv={workdir / f'{mode}.csv'}")
        line = next((line for line in done.stdout.splitlines() if line.startswith("Wrote ")), "")
        rows.append((f"folder, first call, onnx_export={mode}", f"{seconds:.1f} s", line[line.find("[") :]))
        wait_for_export(cache)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--posters", type=Path, required=True, help="a folder of posters (sub-folders included)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pythonpath", default=None, help="run the command's code from this checkout")
    parser.add_argument(
        "--sections", nargs="+", default=["single", "folder"], choices=["single", "folder", "first-folder"]
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="genre-predict-bench-") as tmp:
        workdir = Path(tmp)
        probe = subprocess.run(
            [sys.executable, "-c", "import genre_lightning.inference.background_export"],
            env={**os.environ, **({"PYTHONPATH": args.pythonpath} if args.pythonpath else {})},
            capture_output=True,
            cwd=workdir,  # not this checkout's folder, which would be imported first
        )
        command = Command(args.checkpoint, workdir, args.pythonpath, background=probe.returncode == 0)
        poster = list_inputs(args.posters)[0]
        print(
            f"# genre-predict end to end: {args.checkpoint}; code {args.pythonpath or 'this checkout'}; "
            f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        table = []
        sections = {
            "single": lambda: single_poster(command, poster, workdir, args.repeats),
            "folder": lambda: folder_rate(command, args.posters, workdir, args.repeats),
            "first-folder": lambda: first_folder(command, args.posters, workdir),
        }
        for name in args.sections:
            started = time.perf_counter()
            table += sections[name]()
            print(f"# {name}: {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.1f}", flush=True)
        print("\n" + markdown_table(("measurement", "value", "ratio"), table))


if __name__ == "__main__":
    main()
