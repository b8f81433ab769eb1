"""Tasks by name: ``make_task("chain" | "chain-any" | "chain-exclusion" | "arith" | "gsm8k" | "humaneval" |
"math:FILE.jsonl" | "code" | "math" | "gym:NAME" | "data")``; the chain tasks are
:data:`core.tasks.chain.WORLDS`, ``data`` is the config's ``[data]`` (core.tasks.data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.tasks.base import Problem, Score, Task
from core.tasks.chain import WORLDS

__all__ = ["Problem", "Score", "Task", "make_task", "configured_task", "TASK_NAMES", "check_task_name"]
TASK_NAMES = (*WORLDS, "arith", "gsm8k", "humaneval", "math", "math:FILE", "code", "gym:NAME", "data")


def check_task_name(name: str) -> str:
    """``name`` if :func:`make_task` knows its form (ValueError otherwise): checked when the
    config is read, before any process starts."""
    if name.startswith("math:") and name.split(":", 1)[1] and not Path(name.split(":", 1)[1]).is_file():
        raise ValueError(f"task {name!r}: the file {name.split(':', 1)[1]!r} does not exist")
    if name in TASK_NAMES or (name.startswith(("math:", "gym:")) and name.split(":", 1)[1]):
        return name
    raise ValueError(f"unknown task {name!r} (known: {', '.join(TASK_NAMES)})")


def configured_task(config: Any) -> Task:
    """The task of a run's config (``actor.task``, and ``[data]`` for the data task)."""
    return make_task(config.actor.task, timeout_s=config.actor.verifier_timeout_s,
                     allow_unsandboxed=config.actor.allow_unsandboxed_code, data=config.data)


class _VerifierOnly(Task):
    """A verifier without a problem source (``hsd verify --task math|code``)."""

    def __init__(self, name: str, verifier: Any) -> None:
        self.name = name
        self.verifier = verifier

    def problems(self, split: str = "train", seed: int = 0):
        raise ValueError(f"task {self.name!r} has no problems of its own; use a dataset task")

    def verify(self, completion: str, fields: dict[str, Any]) -> Score:
        return self.verifier.verify(completion, fields)


def make_task(name: str, *, timeout_s: float = 10.0, allow_unsandboxed: bool = False, data: Any = None) -> Task:
    if name in WORLDS:
        from core.tasks.chain import ChainTask

        return ChainTask(world=WORLDS[name])
    if name == "arith":
        from core.tasks.arith import ArithTask

        return ArithTask()
    if name == "gsm8k":
        from core.tasks.math import gsm8k_task

        return gsm8k_task(timeout_s)
    if name == "humaneval":
        from core.tasks.code import humaneval_task
        from core.tasks.sandbox import Limits

        return humaneval_task(limits=Limits(wall_s=timeout_s), allow_unsandboxed=allow_unsandboxed)
    if name == "math":
        from core.tasks.math import MathVerifier

        return _VerifierOnly("math", MathVerifier(timeout_s))
    if name.startswith("math:"):
        from core.tasks.math import jsonl_math_task

        return jsonl_math_task(name.split(":", 1)[1], timeout_s=timeout_s)
    if name == "code":
        from core.tasks.code import CodeVerifier
        from core.tasks.sandbox import Limits, make_sandbox

        sandbox = make_sandbox(Limits(wall_s=timeout_s), allow_unsandboxed=allow_unsandboxed)
        return _VerifierOnly("code", CodeVerifier(sandbox))
    if name == "data":
        from core.tasks.data import data_task

        return data_task(data, timeout_s=timeout_s, allow_unsandboxed=allow_unsandboxed)
    if name.startswith("gym:"):
        from core.tasks.gym import gym_task

        return gym_task(name.split(":", 1)[1])
    check_task_name(name)
    raise AssertionError(f"check_task_name accepted {name!r}, which make_task does not build")
