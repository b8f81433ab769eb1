"""`hsd run`'s console view of its run, read from the learner's ``metrics.jsonl``
(:mod:`learner.step_log`): step N/M, elapsed and ETA, samples/s, the step's reward and the
latest held-out accuracy.

On a terminal: one tqdm bar on stderr, updated in place. Otherwise (a pipe, a CI log): a
plain line every ``every_s`` seconds, at the last step and when the run ends, no carriage
returns.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from learner.step_log import StepLogTail


class RunProgress:
    def __init__(self, run_dir: Path, total: int, stream: TextIO | None = None, every_s: float = 30.0) -> None:
        self.tail = StepLogTail(run_dir, keep=1)
        self.total = total
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.started = time.monotonic()
        self.last_line = -float("inf")
        self.bar = None
        self.shown_offset = 0  # how far into the log the last plain line had read
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", file=self.stream, dynamic_ncols=True)

    def update(self, final: bool = False) -> None:
        new = self.tail.poll()
        step = self.tail.step
        if self.bar is not None:
            if new:
                self.bar.n = step
                self.bar.set_postfix_str(self._postfix(), refresh=True)
            return
        due = new and (time.monotonic() - self.last_line >= self.every_s or step >= self.total)
        if (due or final) and step and self.tail.offset != self.shown_offset:
            self.last_line, self.shown_offset = time.monotonic(), self.tail.offset
            print(f"step {step}/{self.total} | {self._eta()} | {self._postfix()}", file=self.stream, flush=True)

    def _postfix(self) -> str:
        elapsed = time.monotonic() - self.started
        parts = [f"{self.tail.samples / max(elapsed, 1e-9):.1f} samples/s"]
        if self.tail.recent:
            parts.append(f"reward {self.tail.recent[-1]['reward_mean']:.3f}")
        if self.tail.held_out is not None:
            parts.append(f"held-out {self.tail.held_out['accuracy']:.3f} (step {self.tail.held_out['step']})")
        return " | ".join(parts)

    def _eta(self) -> str:
        elapsed = time.monotonic() - self.started
        step = self.tail.step
        if not step:
            return f"{elapsed:.0f}s elapsed"
        left = elapsed / step * (self.total - step)
        return f"{elapsed:.0f}s elapsed, ~{left:.0f}s left"

    def close(self) -> None:
        self.update(final=True)
        if self.bar is not None:
            self.bar.close()
