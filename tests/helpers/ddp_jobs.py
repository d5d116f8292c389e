"""Run by tests/training/test_ddp_matrix.py as ``python -m tests.helpers.ddp_jobs JOBS.json``:
several genre-train runs, one after another, in one pair of DDP processes.

JOBS.json is a list of ``{"run_dir": ..., "overrides": [...]}``; each job is ``train()`` (what
``genre-train`` calls) on the config that command line composes. Lightning starts rank 1 at the
first fit by re-running this command; both processes then run every job in the same order, and the
later jobs reuse the two processes and their process group (``genre-train -m`` starts two new
processes per job, each importing torch and Lightning again). Rank 0's log records of each job go
to ``<run_dir>/job.log``, as genre-train's go to ``train.log``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from genre_lightning.cli.train import train
from tests.helpers.configs import compose_config

JOB_LOG = "job.log"
FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # as conf/hydra/default.yaml's


def main(jobs_file: str) -> None:
    logging.basicConfig(level=logging.INFO, format=FORMAT)
    rank_zero = os.environ.get("LOCAL_RANK", "0") == "0"  # rank 1 is started with LOCAL_RANK=1
    for job in json.loads(Path(jobs_file).read_text()):
        run = Path(job["run_dir"])
        run.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run / JOB_LOG) if rank_zero else logging.NullHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        logging.getLogger().addHandler(handler)
        try:
            train(compose_config("train", job["overrides"], run))
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()


if __name__ == "__main__":
    main(sys.argv[1])
