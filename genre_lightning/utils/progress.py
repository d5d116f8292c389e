"""Progress of long phases outside training (the scan, genre-predict): a rich bar on a terminal,
periodic log lines everywhere else (a Slurm ``.out`` file, ``nohup``, CI)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def interactive() -> bool:
    """Whether stdout is a terminal (a person watching), not a file or a pipe."""
    return sys.stdout.isatty()


def duration(seconds: float) -> str:
    """12.3 s, 4m 05s, 2h 03m."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


class Progress:
    """Progress of a long phase outside training (``with Progress(total, "verify", "files") as p: p.advance()``).

    On a terminal: a rich progress bar. Otherwise: a line every ``interval_s`` seconds
    and one at the end, with the count, the rate and the time left. ``total`` None: not known in
    advance (a folder read as it is walked): the count and the rate only; 0: no progress at all.
    """

    def __init__(self, total: int | None, what: str, unit: str = "items", interval_s: float = 10.0) -> None:
        self.total, self.what, self.unit, self.interval_s = total, what, unit, interval_s
        self.done = 0
        self._logged = -1  # the count of the last line logged
        self._rich: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        self._start = self._last = time.monotonic()
        if interactive() and self.total != 0:
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(transient=True)
            self._rich.start()
            self._task = self._rich.add_task(self.what, total=self.total)
        return self

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self._rich is not None:
            self._rich.update(self._task, advance=count)
            return
        now = time.monotonic()
        if now - self._last >= self.interval_s and (self.total is None or self.done < self.total):
            self._last = now
            self._line(now)

    def _line(self, now: float) -> None:
        self._logged = self.done
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        known = self.total is not None and self.total > 0
        left = (
            f", {duration((self.total - self.done) / rate)} left"
            if known and rate > 0 and self.done < self.total
            else ""
        )
        percent = f" ({self.done / self.total:.0%})" if known else ""
        log.info(
            "%s: %s %s%s, %.1f %s/s, %s%s",
            self.what,
            f"{self.done}/{self.total}" if self.total is not None else self.done,
            self.unit,
            percent,
            rate,
            self.unit,
            duration(elapsed),
            left,
        )

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()
        elif self.total != 0 and self._logged != self.done and time.monotonic() - self._start >= self.interval_s:
            self._line(time.monotonic())  # the final count, for a phase long enough to have had lines


def tracked(items: Iterable[T], total: int, what: str, unit: str = "items", interval_s: float = 10.0) -> Iterator[T]:
    """``items``, with :class:`Progress` advanced by one per item."""
    with Progress(total, what, unit, interval_s) as progress:
        for item in items:
            yield item
            progress.advance()
