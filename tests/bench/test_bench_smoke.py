"""The performance benchmark keeps working (tiny settings; its figures are not checked here)."""

import re
import subprocess
import sys

import pytest

from tests.helpers.paths import REPO

pytestmark = [pytest.mark.slow, pytest.mark.long]


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_benchmark_runs_every_section_and_prints_its_table():
    done = run_bench("bench/performance.py", "--smoke", "--steps", "3", "--rounds", "1", "--probe-epochs", "1")
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "measurement" not in line]
    sections = {row.split("|")[1].strip().split(":")[0].split(" ")[0] for row in rows}
    assert {"train", "predict", "stream", "rss", "decoded", "feature", "workers"} <= sections
    ratios = [float(m) for row in rows for m in re.findall(r"\| ([0-9.]+)x", row)]
    assert len(ratios) >= 15 and all(r > 0 for r in ratios)
    assert re.search(r"rss: genre-train peak .*\| \d+ / \d+ MiB", done.stdout)
    assert re.search(r"rss: genre-train, data.num_workers=2 peak .*\| \d+ / \d+ MiB", done.stdout)
    assert re.search(r"rss: genre-eval peak .*\| \d+ MiB", done.stdout)
    assert re.search(r"rss: genre-predict peak .*\| \d+ MiB", done.stdout)
    for backend in ("torch", "onnxruntime", "int8"):
        assert re.search(rf"predict: limit with {backend} .*\| [0-9.]+ img/s", done.stdout)
    assert re.search(r"genre-predict \(default: backend=auto -> onnxruntime\) .*x, \d+% of the limit", done.stdout)
    assert re.search(r"predict: int8 .*same top-1 for [0-9.]+%; accuracy", done.stdout)
    streamed = re.findall(r"stream: genre-predict on \d+ files: peak RSS .*\| \d+ MiB / [0-9.]+ img/s", done.stdout)
    assert len(streamed) == 2


def test_serve_load_benchmark_prints_its_table():
    done = run_bench("bench/serve_load.py", "--smoke", "--requests", "12", "--seconds", "20", "--clients", "1,4")
    rate = float(re.search(r"genre-predict .*: ([0-9.]+) images/s", done.stdout).group(1))
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| batching")]
    assert len(rows) == 4 and rate > 0  # batching on and off, at 1 and 4 clients
    for row in rows:
        answers, failures, per_second, ratio = int(row[3]), int(row[4]), float(row[5]), float(row[9].strip()[:-1])
        assert answers == 12 and failures == 0 and ratio == pytest.approx(per_second / rate, abs=0.01)
