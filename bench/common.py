"""What every benchmark shares: a figure type, side-by-side timing, and the results file.

Each figure is a ratio against a baseline measured in the same run: the machine is shared
and noisy, so absolute times drift but ratios of interleaved repetitions hold.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).with_name("results.json")


class Scale(enum.Enum):
    """How much a suite measures. ``QUICK`` is ``make bench``; ``FULL`` adds the scaling
    rows; ``SMOKE`` takes each measurement once at its smallest size: it shows that every
    suite still runs and writes well-formed figures (the test suite runs it), and its
    figures mean nothing."""

    SMOKE = "smoke"
    QUICK = "quick"
    FULL = "full"


@dataclass
class Figure:
    name: str
    value: float  # ours
    baseline: float  # the baseline, same unit
    goal: str  # applies to ratio, e.g. ">= 0.7"
    unit: str
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("nan")

    def met(self) -> bool:
        op, bound = self.goal.split()
        return self.ratio >= float(bound) if op == ">=" else self.ratio <= float(bound)

    def as_json(self) -> dict:
        out = asdict(self)
        out.pop("name")
        # significant digits, not decimal places: a ratio of 0.04 must keep its precision
        out["ratio"] = float(f"{self.ratio:.4g}")
        return out


def interleaved(ours: Callable[[], float], baseline: Callable[[], float], repeats: int) -> tuple[float, float]:
    """Median of ``repeats`` alternating runs of each; each callable returns its own rate."""
    a, b = [], []
    for i in range(repeats):
        # alternate which goes first so a warm cache or a noisy neighbour favours neither
        if i % 2:
            b.append(baseline())
            a.append(ours())
        else:
            a.append(ours())
            b.append(baseline())
    return statistics.median(a), statistics.median(b)


@contextlib.contextmanager
def pinned(server_pid: int | None) -> Iterator[None]:
    """This process on the first core, the server on the last (when there are two or more),
    so that the client and the server do not take turns on one core."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or server_pid is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cores[0]})
    os.sched_setaffinity(server_pid, {cores[-1]})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def rate(work: Callable[[], float]) -> float:
    """Runs ``work`` (which returns the amount it processed) and returns amount per second."""
    start = time.perf_counter()
    amount = work()
    return amount / (time.perf_counter() - start)


def table(figures: list[Figure]) -> str:
    rows = [f"| {'figure':<34} | {'ours':>12} | {'baseline':>12} | {'ratio':>6} | {'goal':>7} | unit |",
            f"|{'-' * 36}|{'-' * 14}|{'-' * 14}|{'-' * 8}|{'-' * 9}|------|"]
    for f in figures:
        mark = "" if f.met() else " ✗"
        rows.append(f"| {f.name:<34} | {f.value:>12.4g} | {f.baseline:>12.4g} | {f.ratio:>6.3f} | "
                    f"{f.goal:>7} | {f.unit}{mark} |")
    return "\n".join(rows)


def write_results(figures: list[Figure], path: Path = RESULTS, machine: str = "") -> None:
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing.update({f.name: f.as_json() for f in figures})
    if machine:
        existing["_machine"] = machine
    path.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
