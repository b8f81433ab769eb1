"""What the tiny model learns before any RL, per task: a stream of supervised examples
(a view and the tokens the loss reads) that gives it the task's world knowledge and the
in-context skills a pretrained LLM brings to the teacher roles."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.views import ScoringInput


@dataclass(frozen=True)
class Example:
    view: ScoringInput  # context ++ target
    trained: list[bool] | None = None  # per target token: does the loss read it (None: all)


@dataclass(frozen=True)
class Curriculum:
    example: Callable[[Any, random.Random], Example]  # (tokenizer, rng) -> one example
    steps: int  # optimiser steps of 32 examples
    lr: float  # peak of the one-cycle schedule


def curriculum(task: str) -> Curriculum:
    if task == "arith":
        from learner.curricula import arith as module
    elif task == "chain":
        from learner.curricula import chain as module
    elif task == "chain-any":
        from learner.curricula import chain_any as module
    else:
        raise ValueError(f"no warm-start curriculum for task {task!r} (arith, chain, chain-any)")
    return Curriculum(module.example, module.STEPS, module.LR)
