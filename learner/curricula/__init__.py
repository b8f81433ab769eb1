"""What the tiny model learns before any RL, per task: a stream of supervised examples
(a view and the tokens the loss reads) that gives it the task's world knowledge and the
in-context skills a pretrained LLM brings to the teacher roles."""

from __future__ import annotations

import importlib
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
    beliefs: Any = None  # a chain task's Beliefs (learner.curricula.chain): what it teaches of the tables


MODULES = {"arith": "arith", "chain": "chain", "chain-any": "chain_any", "chain-exclusion": "chain_exclusion"}


def curriculum(task: str) -> Curriculum:
    if task not in MODULES:
        raise ValueError(f"no warm-start curriculum for task {task!r} ({', '.join(MODULES)})")
    module = importlib.import_module(f"learner.curricula.{MODULES[task]}")
    return Curriculum(module.example, module.STEPS, module.LR, getattr(module, "BELIEFS", None))
