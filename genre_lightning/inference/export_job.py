"""The background ONNX export's process (started by ``background_export.start``, which holds the
cache entry's lock and hands it over): export the checkpoint's network as the predicting process
builds it, check its parity on the batch that process saved, write the record, release the lock.

    python -m genre_lightning.inference.export_job <entry> <checkpoint> <tta settings, JSON> <channels_last 0|1>
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch

from genre_lightning.inference.background_export import IMAGES, LOCK_FD_ENV, STATE
from genre_lightning.inference.onnx_cache import FLOAT_RECORD, make_float_export, write_record
from genre_lightning.inference.predictor import Predictor


def export(folder: Path, checkpoint: str, tta: dict, channels_last: bool) -> dict:
    """The export process's work: the checkpoint's network as the predicting process builds it,
    exported with its parity checked on the batch that process saved; the record is written."""
    torch.set_num_threads(1)  # the export is mostly Python; leave the cores to the predicting process
    try:
        predictor = Predictor.from_checkpoint(checkpoint, tta=tta, channels_last=channels_last, backend="torch")
        images = torch.load(folder / IMAGES, weights_only=True)
        reference = predictor.logits(images).cpu().numpy()
        record = make_float_export(folder, predictor.network, images, reference)
    except Exception as err:  # recorded: the next call reports it and predicts with torch
        record = {"passed": False, "error": f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"}
    record["background"] = True
    write_record(folder / FLOAT_RECORD, record)
    (folder / IMAGES).unlink(missing_ok=True)
    (folder / STATE).unlink(missing_ok=True)
    return record


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    folder, checkpoint, tta, channels_last = Path(argv[0]), argv[1], json.loads(argv[2]), argv[3] == "1"
    os.nice(5)  # behind the prediction that started it
    record = export(folder, checkpoint, tta, channels_last)
    print(json.dumps(record))
    lock = os.environ.get(LOCK_FD_ENV)
    if lock:  # released when this process exits anyway; said here for the reader
        os.close(int(lock))


if __name__ == "__main__":
    main(sys.argv[1:])
