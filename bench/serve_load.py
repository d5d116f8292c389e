"""genre-serve under load, against genre-predict on the same machine in the same run.

    python bench/serve_load.py            # real posters + tf_efficientnet_lite0 (Lite0 weights) if ../shared has them
    python bench/serve_load.py --smoke    # tiny: demo posters, resnet10t at 32 px (the test suite runs this)

1. A checkpoint: one short genre-train run (the figures are about speed, not accuracy).
2. genre-predict's images/s: the checkpoint's Predictor over the posters with genre-predict's own
   settings (conf/predict.yaml: batch size, decode thread, channels-last), after a warm-up batch;
   measured before and after the servers, and the ratios use the mean of the two.
3. genre-serve as a process on a free loopback port, batching on and then off: 1, 4 and 16 clients,
   each a thread with its own keep-alive connection POSTing poster bytes; requests/s and p50/p95/p99
   latency. Every level is bounded in count (--requests) and time (--seconds); only 127.0.0.1 is used.

The clients run on the same CPU as the server, so at 16 clients they take part of its cores.
"""

from __future__ import annotations

import argparse
import http.client
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_POSTERS = SHARED / "data" / "four_genre_posters"
LITE0 = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"
BIN = Path(sys.executable).parent


def posters(smoke: bool, work: Path) -> tuple[list[Path], str]:
    if REAL_POSTERS.is_dir() and not smoke:
        return sorted(REAL_POSTERS.rglob("*.jpg")), f"real posters ({REAL_POSTERS.name})"
    from genre_lightning.data.demo import ensure_demo_posters

    size = (48, 72) if smoke else (380, 562)  # the real posters' size
    root = ensure_demo_posters(work / "posters", per_class=12 if smoke else 40, size=size, seed=0)
    return sorted(root.rglob("*.jpg")), f"demo posters {size[0]}x{size[1]}"


def checkpoint(smoke: bool, root: Path, work: Path) -> tuple[Path, str]:
    if smoke:
        model, name = ["debug=tests"], "resnet10t (random init), 32x32"
    elif LITE0.is_file():
        model, name = ["model=tf_efficientnet_lite0", f"model.weights={LITE0}"], "tf_efficientnet_lite0, 224x224"
    else:
        model, name = ["model=tf_efficientnet_lite0", "model.pretrained=false"], "tf_efficientnet_lite0 (random), 224"
    run = work / "run"
    done = subprocess.run(
        [str(BIN / "genre-train"), *model, f"data.root={root}", "trainer=cpu", "trainer.max_epochs=1",
         "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false", "logger=csv",
         "data.num_workers=0", f"hydra.run.dir={run}"],
        cwd=work, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode:
        sys.exit(f"genre-train failed:\n{done.stderr[-3000:]}")
    return run / "checkpoints" / "last.ckpt", name


def genre_predict_rate(ckpt: Path, paths: list[Path], work: Path) -> float:
    """Images/s of what genre-predict runs on a folder, with its own default settings."""
    from genre_lightning.cli.common import compose_config
    from genre_lightning.inference.predictor import Predictor

    cfg = compose_config("predict", [f"ckpt_path={ckpt}", f"input={paths[0].parent}"], work)
    predictor = Predictor.from_checkpoint(ckpt, channels_last=cfg.channels_last)
    options = {"batch_size": cfg.batch_size, "num_workers": cfg.num_workers, "prefetch": cfg.prefetch}
    predictor.predict_files([str(p) for p in paths[: cfg.batch_size]], progress=False, **options)  # warm-up
    start = time.perf_counter()
    frame = predictor.predict_files([str(p) for p in paths], progress=False, **options)
    elapsed = time.perf_counter() - start
    assert (frame["error"] == "").all()
    return len(paths) / elapsed


def start_server(ckpt: Path, work: Path, *overrides: str) -> tuple[subprocess.Popen, int]:
    log = work / f"serve-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(BIN / "genre-serve"), f"ckpt_path={ckpt}", "serve.host=127.0.0.1", "serve.port=0", *overrides],
            cwd=work, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        found = re.search(r"on http://127\.0\.0\.1:(\d+) ", log.read_text())
        if found:
            return process, int(found.group(1))
        if process.poll() is not None:
            sys.exit(f"genre-serve exited:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    process.kill()
    sys.exit("genre-serve did not start")


def load(port: int, bodies: list[bytes], clients: int, requests: int, seconds: float) -> dict[str, float]:
    """``clients`` threads sending until ``requests`` answers or ``seconds`` have passed."""
    latencies: list[float] = []
    failures: list[int] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    issued = iter(range(requests))

    def client(number: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < stop_at:
            with lock:
                index = next(issued, None)
            if index is None:
                break
            start = time.perf_counter()
            conn.request("POST", "/predict", bodies[index % len(bodies)], {"Content-Type": "image/jpeg"})
            response = conn.getresponse()
            response.read()
            with lock:
                (latencies if response.status == 200 else failures).append(time.perf_counter() - start)
        conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    return {
        "answers": len(latencies),
        "failures": len(failures),
        "rate": len(latencies) / elapsed,
        "p50": pct(0.50),
        "p95": pct(0.95),
        "p99": pct(0.99),
        "mean": 1000 * statistics.fmean(latencies) if latencies else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny settings (the test suite)")
    parser.add_argument("--requests", type=int, default=240, help="requests per level at most")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds per level at most")
    parser.add_argument("--clients", default="1,4,16", help="client counts, comma-separated")
    parser.add_argument("--images", type=int, default=320, help="posters for genre-predict's rate")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        work = Path(tmp)
        paths, source = posters(args.smoke, work)
        ckpt, model = checkpoint(args.smoke, paths[0].parent.parent, work)
        paths = paths[: args.images]
        bodies = [p.read_bytes() for p in paths]
        print(f"# {source}, {len(paths)} images; {model}; torch threads as configured; machine shared and loaded")
        # genre-predict before and after the servers: on a shared machine the load moves, and the ratios
        # use the mean of the two.
        before = genre_predict_rate(ckpt, paths, work)
        rows = []
        for batching in (True, False):
            process, port = start_server(ckpt, work, f"serve.batching={str(batching).lower()}")
            try:
                load(port, bodies, 4, 16, args.seconds)  # warm-up
                for count in clients:
                    rows.append((batching, count, load(port, bodies, count, args.requests, args.seconds)))
            finally:
                process.terminate()
                process.wait(timeout=120)
        after = genre_predict_rate(ckpt, paths, work)
    predict_rate = (before + after) / 2
    print(
        f"\ngenre-predict (batch 32, decode thread, channels-last): {predict_rate:.1f} images/s "
        f"(before the servers {before:.1f}, after {after:.1f})\n"
    )
    print("| server | clients | answers | failures | requests/s | p50 ms | p95 ms | p99 ms | vs genre-predict |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batching, count, r in rows:
        print(
            f"| batching {'on' if batching else 'off'} | {count} | {r['answers']} | {r['failures']} | "
            f"{r['rate']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | {r['rate'] / predict_rate:.2f}x |"
        )


if __name__ == "__main__":
    main()
