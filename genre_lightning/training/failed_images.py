"""Images that passed the scan but failed to decode during a run: which files, why, how often."""

from __future__ import annotations

from collections import Counter
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from genre_lightning.utils.distributed import all_gather_objects


def images_skipped_during_run(failed_items: list[tuple[str, int, str]], datamodule: Any) -> list[dict[str, Any]]:
    """Images that passed the scan but failed to decode while training or evaluating, from every
    rank, with their paths and how many times each failed (once per epoch that read it).
    ``failed_items`` holds the model's (stage, dataset index, reason); the test stage reads the data
    module's ``test_split`` (genre-eval can point it at val or train)."""
    gathered = all_gather_objects(failed_items)  # every rank, also one with nothing to report
    counts = Counter(item for items in gathered for item in items)
    split_of = {"test": getattr(datamodule, "test_split", "test")}
    report = [
        {
            "split": split_of.get(stage, stage),
            "path": datamodule.datasets[split_of.get(stage, stage)].paths[index],
            "reason": reason,
            "times": times,
        }
        for (stage, index, reason), times in sorted(counts.items())
    ]
    if report:
        rank_zero_warn(
            f"{len(report)} image(s) failed to decode during the run and were skipped: "
            + "; ".join(f"{r['path']} ({r['reason']})" for r in report[:5])
        )
    return report
