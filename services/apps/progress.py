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
from typing import Any, TextIO

from learner.step_log import FILE, read


class RunProgress:
    def __init__(self, run_dir: Path, total: int, stream: TextIO | None = None, every_s: float = 30.0) -> None:
        self.path = Path(run_dir) / FILE
        self.total = total
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.offset = 0
        self.started = time.monotonic()
        self.last_line = -float("inf")
        self.step = 0
        self.samples = 0
        self.reward: float | None = None
        self.held_out: tuple[int, float] | None = None
        self.bar = None
        self.shown = ""  # the last plain line printed
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", file=self.stream, dynamic_ncols=True)

    def update(self, final: bool = False) -> None:
        records, self.offset = read(self.path, self.offset)
        for r in records:
            self._take(r)
        if self.bar is not None:
            if records:
                self.bar.n = self.step
                self.bar.set_postfix_str(self._postfix(), refresh=True)
            return
        due = records and (time.monotonic() - self.last_line >= self.every_s or self.step >= self.total)
        if (due or final) and self.step:
            line = f"step {self.step}/{self.total} | {self._eta()} | {self._postfix()}"
            if line != self.shown:
                self.last_line, self.shown = time.monotonic(), line
                print(line, file=self.stream, flush=True)

    def _take(self, r: dict[str, Any]) -> None:
        if r.get("kind") == "step":
            self.step, self.reward = r["step"], r["reward_mean"]
            self.samples += r["samples"]
        elif r.get("kind") == "eval":
            self.held_out = (r["step"], r["accuracy"])

    def _postfix(self) -> str:
        elapsed = time.monotonic() - self.started
        parts = [f"{self.samples / max(elapsed, 1e-9):.1f} samples/s"]
        if self.reward is not None:
            parts.append(f"reward {self.reward:.3f}")
        if self.held_out is not None:
            parts.append(f"held-out {self.held_out[1]:.3f} (step {self.held_out[0]})")
        return " | ".join(parts)

    def _eta(self) -> str:
        elapsed = time.monotonic() - self.started
        if not self.step:
            return f"{elapsed:.0f}s elapsed"
        left = elapsed / self.step * (self.total - self.step)
        return f"{elapsed:.0f}s elapsed, ~{left:.0f}s left"

    def close(self) -> None:
        self.update(final=True)
        if self.bar is not None:
            self.bar.close()
