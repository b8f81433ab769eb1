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


Curriculum = Callable[[Any, random.Random], Example]  # (tokenizer, rng) -> one example


def curriculum(task: str) -> Curriculum:
    if task == "arith":
        from learner.curricula.arith import example
    elif task == "chain":
        from learner.curricula.chain import example
    else:
        raise ValueError(f"no warm-start curriculum for task {task!r} (arith, chain)")
    return example
