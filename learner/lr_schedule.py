"""The learning rate at each optimiser step: one home for the warmup and decay formula,
read by the RL learner (``[learner] lr_schedule``) and by SD-Zero's SRT stages.

With ``s`` the optimiser steps already taken, ``W`` the warmup steps and ``T`` the
schedule's length, the factor on the peak lr is::

    s < W:      (s + 1) / W                          (linear warmup)
    constant:   1
    linear:     1 − p             p = min(1, (s − W) / max(1, T − W))
    cosine:     ½ (1 + cos(π p))

The lr is a function of the step alone, so a resumed run continues on the same curve
without any scheduler state in its checkpoint.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(step: int, schedule: str, warmup_steps: int, total_steps: int) -> float:
    """The factor on the peak lr for the optimiser step after ``step`` steps (formula above)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule {schedule!r} (schedules: {', '.join(SCHEDULES)})")
