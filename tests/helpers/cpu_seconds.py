"""An opt-in pytest plugin: the CPU seconds each test costs, for comparing tests on a shared machine
where wall-clock durations depend on what else runs (``--durations`` measures wall time).

    python -m pytest -p tests.helpers.cpu_seconds [--cpu-seconds-table=40] ...

Counts this process (getrusage) and every process started under it, children and grandchildren
included, also DDP ranks whose parent has exited: /proc is read every 0.25 s and each process
counts with its last reading (a process that lives under 0.25 s may be missed). Setup, call and
teardown are summed per test; a module fixture's cost falls on the first test that uses it. The
table is printed at the end of the run, slowest first, with the sum. With pytest-xdist each worker
measures its own tests; the reading itself takes about 1% of a core per worker.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections import defaultdict
from collections.abc import Iterator

import pytest

INTERVAL_S = 0.25
TICKS = os.sysconf("SC_CLK_TCK")


class ProcessTree:
    """CPU seconds of the processes started under this one, read from /proc."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.seen: dict[tuple[int, int], float] = {}  # (pid, start time) -> CPU seconds at its last reading
        self.lock = threading.Lock()
        threading.Thread(target=self._loop, daemon=True, name="cpu-seconds").start()

    @staticmethod
    def _stat(pid: int) -> tuple[int, float, int] | None:
        """(parent pid, CPU seconds, start time) of a process, or None once it is gone."""
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS, int(fields[19])

    def read(self) -> None:
        table = {pid: stat for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if (stat := self._stat(pid))}
        children = defaultdict(list)
        for pid, (parent, _, _) in table.items():
            children[parent].append(pid)
        mine, stack = set(), list(children[self.pid])
        while stack:
            pid = stack.pop()
            mine.add(pid)
            stack.extend(children[pid])
        with self.lock:
            for pid, (_, cpu, start) in table.items():
                if pid in mine or (pid, start) in self.seen:  # an orphaned rank keeps counting
                    self.seen[(pid, start)] = cpu

    def _loop(self) -> None:
        while True:
            self.read()
            time.sleep(INTERVAL_S)

    def total(self) -> float:
        self.read()
        with self.lock:
            return sum(self.seen.values())


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


_tree: ProcessTree | None = None
_phase_start: float = 0.0
_costs: dict[str, float] = defaultdict(float)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cpu-seconds-table", type=int, default=30, help="tests listed by tests.helpers.cpu_seconds")


def pytest_configure(config: pytest.Config) -> None:
    global _tree
    if not hasattr(config, "workerinput") and config.getoption("numprocesses", None):
        return  # the xdist controller runs no test: its workers measure
    _tree = ProcessTree()


def _now() -> float:
    return _own_cpu() + (_tree.total() if _tree else 0.0)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    global _phase_start
    _phase_start = _now()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    global _phase_start
    _phase_start = _now()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    global _phase_start
    _phase_start = _now()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    report = yield
    if _tree is not None:
        report.user_properties.append(("cpu_seconds", _now() - _phase_start))
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _costs[report.nodeid] += sum(value for name, value in report.user_properties if name == "cpu_seconds")


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    if not _costs:
        return
    ranked = sorted(_costs.items(), key=lambda item: -item[1])
    terminalreporter.section("CPU seconds (this process and all it started; tests.helpers.cpu_seconds)")
    for nodeid, seconds in ranked[: config.getoption("--cpu-seconds-table")]:
        terminalreporter.write_line(f"{seconds:8.1f}  {nodeid}")
    terminalreporter.write_line(f"{sum(_costs.values()):8.1f}  in all, {len(ranked)} tests")
