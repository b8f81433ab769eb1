"""Built-in synthetic task: multi-step integer arithmetic with a terse final answer.

    prompt:    "Compute 7+3*4."
    solution:  "3*4=12, 7+12=19. #### 19"

The verifier reads only the number after the last ``####`` — the answer is terse — but
getting it right requires the steps in the right order (precedence), so the path matters
and a failed attempt diverges from a successful one at a specific step.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Iterator
from typing import Any

from core.tasks.base import Problem, Score, Task, score_final_answer

OPS = "+-*"


def solve(numbers: list[int], ops: list[str]) -> tuple[list[str], int]:
    """The step-by-step evaluation (``*`` before ``+``/``-``, then left to right)."""
    nums, ops = list(numbers), list(ops)
    steps = []
    for wanted in ("*", "+-"):
        i = 0
        while i < len(ops):
            if ops[i] in wanted:
                a, b, op = nums[i], nums[i + 1], ops[i]
                value = a * b if op == "*" else a + b if op == "+" else a - b
                steps.append(f"{a}{op}{b}={value}")
                nums[i : i + 2] = [value]
                del ops[i]
            else:
                i += 1
    return steps, nums[0]


def make_problem(numbers: list[int], ops: list[str]) -> Problem:
    expr = "".join(f"{n}{o}" for n, o in zip(numbers, ops, strict=False)) + str(numbers[-1])
    steps, value = solve(numbers, ops)
    return Problem(
        prompt_id=expr, prompt=f"Compute {expr}.", answer=str(value),
        reference=", ".join(steps) + f". #### {value}",
    )


def is_test(expr: str) -> bool:
    """A fixed 10% of all expressions is held out, by a hash of the expression."""
    return zlib.crc32(expr.encode()) % 10 == 0


class ArithTask(Task):
    name = "arith"

    def __init__(self, terms: tuple[int, int] = (2, 3), max_operand: int = 9) -> None:
        self.terms = terms
        self.max_operand = max_operand

    def draw(self, rng: random.Random) -> Problem:
        k = rng.randint(*self.terms)
        numbers = [rng.randint(1, self.max_operand) for _ in range(k)]
        ops = [rng.choice(OPS) for _ in range(k - 1)]
        return make_problem(numbers, ops)

    def problems(self, split: str = "train", seed: int = 0) -> Iterator[Problem]:
        rng = random.Random(f"arith:{split}:{seed}")
        while True:
            p = self.draw(rng)
            if is_test(p.prompt_id) == (split == "test"):
                yield p

    def problem(self, prompt_id: str) -> Problem:
        tokens = re.findall(r"\d+|[-+*]", prompt_id)
        return make_problem([int(t) for t in tokens[::2]], tokens[1::2])

    def verify(self, completion: str, fields: dict[str, Any]) -> Score:
        return score_final_answer(completion, fields["answer"])
