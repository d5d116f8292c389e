"""``predictions.csv`` written as the rows come, so a folder of any size is predicted in bounded
memory, and a stopped run can be resumed.

The header goes first and each batch's rows are appended in one write and flushed, so a run that is
stopped leaves every finished batch in the file (and at most one partial last line, which resuming
drops and predicts again). ``resume=True`` reads the file names already in the file and the run
skips them; without it the file is started afresh. The file is the one genre-predict has always
written: the same columns (``prediction_table.probability_frame``), values and encoding.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from genre_lightning.utils.errors import ConfigError

# As utils/csvio.py: file names that are not valid UTF-8 are kept byte-exact.
ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}


class PredictionCsv:
    """An open ``predictions.csv`` with ``columns``; ``done``: the file paths it already holds (resume)."""

    def __init__(self, path: str | Path, columns: Sequence[str], resume: bool) -> None:
        self.path, self.columns = Path(path), list(columns)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        done = self._finished_rows() if resume and self.path.is_file() else None
        self.done: set[str] = done or set()
        if done is not None:
            self.file = open(self.path, "a", newline="", **ENCODING)  # noqa: SIM115 (closed in close())
        else:
            self.file = open(self.path, "w", newline="", **ENCODING)  # noqa: SIM115
            self._write(pd.DataFrame(columns=self.columns).to_csv(index=False, lineterminator="\n"))

    def append(self, frame: pd.DataFrame) -> None:
        """Append rows (columns in this file's order), one write, flushed."""
        text = io.StringIO()
        frame[self.columns].to_csv(text, header=False, index=False, lineterminator="\n")
        self._write(text.getvalue())

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> PredictionCsv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, text: str) -> None:
        self.file.write(text)
        self.file.flush()

    def _finished_rows(self) -> set[str] | None:
        """The file paths of the complete rows; a partial last line (a run stopped mid-write) is cut
        off. None when not even the header is complete: the file is then started afresh."""
        if _cut_partial_line(self.path) == 0:
            return None
        with open(self.path, newline="", **ENCODING) as file:
            reader = csv.reader(file)
            header = next(reader, [])
            if header != self.columns:
                raise ConfigError(
                    "resume",
                    True,
                    f"an output_csv that genre-predict wrote for this model's genres ({self.path} has the "
                    f"columns {header[:8]}, this model writes {self.columns[:8]}); or resume=false to start it afresh",
                )
            return {row[0] for row in reader if row}


def _cut_partial_line(path: Path, block: int = 1 << 16) -> int:
    """Truncate ``path`` after its last newline (read backwards, so a large file is not read whole); the new size."""
    with open(path, "rb+") as raw:
        size = position = raw.seek(0, io.SEEK_END)
        while position > 0:
            start = max(0, position - block)
            raw.seek(start)
            newline = raw.read(position - start).rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            position = start
        else:
            end = 0
        if end < size:
            raw.truncate(end)
        return end
