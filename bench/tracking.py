"""What a tracker costs: `genre-train experiment=demo` with each logger against TensorBoard alone.

    python bench/tracking.py [--rounds 2]

Each round runs the demo once per logger, in alternating order, each a whole console-script run
in a fresh folder (interpreter start, training, testing, figures, uploads): `logger=tensorboard`,
`logger=mlflow` (the default local SQLite store under the folder's outputs/), `logger=wandb` with
WANDB_MODE=offline (no network here), and `logger=many` (TensorBoard + CSV + MLflow). Prints each
run's wall time and the ratio of the sums to TensorBoard's. The demo posters are drawn once and
shared (`data.root` of a first run), so the rounds time only the run itself.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOGGERS = ("tensorboard", "mlflow", "wandb", "many")


def run_demo(logger: str, folder: Path, posters: Path) -> float:
    folder.mkdir(parents=True)
    command = [
        str(Path(sys.executable).parent / "genre-train"),
        "experiment=demo",
        f"logger={logger}",
        f"data.root={posters}",
        "print_config=false",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(folder)}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"logger={logger} failed:\n{done.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="genre-tracking-") as workdir:
        work = Path(workdir)
        from genre_lightning.data.demo import ensure_demo_posters

        posters = ensure_demo_posters(work / "outputs" / "demo_posters")
        times: dict[str, list[float]] = {name: [] for name in LOGGERS}
        for round_ in range(args.rounds):
            order = LOGGERS if round_ % 2 == 0 else tuple(reversed(LOGGERS))
            for logger in order:
                times[logger].append(run_demo(logger, work / f"r{round_}-{logger}", posters))
                print(f"round {round_ + 1} logger={logger}: {times[logger][-1]:.1f} s", flush=True)
    base = sum(times["tensorboard"])
    print("\n| logger | wall s per round | ratio to tensorboard (sums) |\n|---|---|---|")
    for logger, values in times.items():
        print(f"| `{logger}` | {' / '.join(f'{v:.1f}' for v in values)} | {sum(values) / base:.2f}x |")


if __name__ == "__main__":
    main()
