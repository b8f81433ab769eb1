"""The learner's per-step record: ``metrics.jsonl`` in the run dir, one JSON object a line,
appended as the run goes, so that a run's curves can be read from its dir alone (the
console view of `hsd run`, `hsd compare`, a notebook) without Prometheus.

Lines::

    {"kind": "step", "step", "version", "time", "seconds", "samples", "tokens_per_second",
     "reward_mean", "loss", "grad_norm", "staleness", "teacher_kl", "rho_mean", ...}
    {"kind": "eval", "step", "time", "accuracy", "accuracy_by_length", "reference_logprob"}

A reader may see the last line half written: it skips a line that does not parse.
The same numbers go to the run's other curve sinks (:mod:`learner.curves`: TensorBoard,
W&B) as they are written.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any

from learner.curves import CurveSink, eval_scalars, step_scalars

log = logging.getLogger(__name__)
FILE = "metrics.jsonl"


class StepLog:
    def __init__(self, run_dir: Path, total_steps: int, sinks: list[CurveSink] | None = None) -> None:
        self.path = Path(run_dir) / FILE
        self.total = total_steps
        self.sinks = sinks or []

    def _append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def step(self, step: int, version: int, metrics: dict[str, float], *, seconds: float, samples: int,
             tokens: int, staleness: float) -> None:
        record = {"kind": "step", "step": step, "version": version, "time": time.time(), "seconds": seconds,
                  "samples": samples, "tokens_per_second": tokens / max(seconds, 1e-9), "staleness": staleness,
                  **metrics}
        self._append(record)
        for sink in self.sinks:
            sink.scalars(step, step_scalars(record))
        log.info("step %d/%d | reward %.3f | staleness %.2f | loss %+.4f | %s tok/s", step, self.total,
                 metrics["reward_mean"], staleness, metrics["loss"], f"{record['tokens_per_second']:,.0f}")

    def evaluation(self, step: int, accuracy: float, by_length: dict[int, float],
                   reference_logprob: float | None) -> None:
        self._append({"kind": "eval", "step": step, "time": time.time(), "accuracy": accuracy,
                      "accuracy_by_length": {str(k): v for k, v in by_length.items()},
                      "reference_logprob": reference_logprob})
        for sink in self.sinks:
            sink.scalars(step, eval_scalars(accuracy, by_length, reference_logprob))

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def read(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The complete lines from byte ``offset`` on, and the offset after the last of them."""
    try:
        with Path(path).open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    records, used = [], 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # half written: read again next time
        used += len(line)
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records, offset + used


class StepLogTail:
    """A reader's view of a run's ``metrics.jsonl`` as it grows: the newest step records
    (``recent``, at most ``keep``), the samples trained so far and the latest held-out
    evaluation. Each :meth:`poll` reads what was appended since the one before."""

    def __init__(self, run_dir: Path, keep: int = 10) -> None:
        self.path = Path(run_dir) / FILE
        self.offset = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)
        self.samples = 0
        self.held_out: dict[str, Any] | None = None

    @property
    def step(self) -> int:
        return self.recent[-1]["step"] if self.recent else 0

    def poll(self) -> int:
        """Reads the lines appended since the last call; returns how many records they held."""
        records, self.offset = read(self.path, self.offset)
        for r in records:
            if r.get("kind") == "step":
                self.recent.append(r)
                self.samples += r.get("samples", 0)
            elif r.get("kind") == "eval":
                self.held_out = r
        return len(records)
