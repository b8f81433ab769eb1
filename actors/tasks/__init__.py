"""Tasks by name: ``make_task("arith" | "gsm8k" | "humaneval" | "math:FILE.jsonl" |
"code" | "math" | "gym:NAME")``."""

from __future__ import annotations

from typing import Any

from actors.tasks.base import Problem, Score, Task

__all__ = ["Problem", "Score", "Task", "make_task", "TASK_NAMES"]
TASK_NAMES = ("arith", "gsm8k", "humaneval", "math", "math:FILE", "code", "gym:NAME")


class _VerifierOnly(Task):
    """A verifier without a problem source (``hsd verify --task math|code``)."""

    def __init__(self, name: str, verifier: Any) -> None:
        self.name = name
        self.verifier = verifier

    def problems(self, split: str = "train", seed: int = 0):
        raise ValueError(f"task {self.name!r} has no problems of its own; use a dataset task")

    def verify(self, completion: str, fields: dict[str, Any]) -> Score:
        return self.verifier.verify(completion, fields)


def make_task(name: str, *, timeout_s: float = 10.0, allow_unsandboxed: bool = False) -> Task:
    if name == "arith":
        from actors.tasks.arith import ArithTask

        return ArithTask()
    if name == "gsm8k":
        from actors.tasks.math import gsm8k_task

        return gsm8k_task(timeout_s)
    if name == "humaneval":
        from actors.sandbox import Limits
        from actors.tasks.code import humaneval_task

        return humaneval_task(limits=Limits(wall_s=timeout_s), allow_unsandboxed=allow_unsandboxed)
    if name == "math":
        from actors.tasks.math import MathVerifier

        return _VerifierOnly("math", MathVerifier(timeout_s))
    if name.startswith("math:"):
        from actors.tasks.math import jsonl_math_task

        return jsonl_math_task(name.split(":", 1)[1], timeout_s=timeout_s)
    if name == "code":
        from actors.sandbox import Limits, make_sandbox
        from actors.tasks.code import CodeVerifier

        sandbox = make_sandbox(Limits(wall_s=timeout_s), allow_unsandboxed=allow_unsandboxed)
        return _VerifierOnly("code", CodeVerifier(sandbox))
    if name.startswith("gym:"):
        from actors.tasks.gym import gym_task

        return gym_task(name.split(":", 1)[1])
    raise ValueError(f"unknown task {name!r} (known: {', '.join(TASK_NAMES)})")
