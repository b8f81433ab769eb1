"""A task: a source of problems plus a verifier.

``Task.verify(completion, fields)`` scores one completion; ``fields`` carries what the
verifier needs (the answer; for code the prompt, tests and entry point). The same fields
come from a task's own problems or from a line of a JSONL file (``hsd verify``).
"""

from __future__ import annotations

import random
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Problem:
    prompt_id: str  # stable id (the peer bank's key)
    prompt: str | list[dict[str, str]]  # what the policy sees
    answer: str | None  # reference answer (verifier, OPSD/HSD teacher)
    fields: dict[str, Any] = field(default_factory=dict)  # what the verifier needs
    reference: str | None = None  # a full reference solution, where the task has one


@dataclass(frozen=True)
class Score:
    reward: float
    success: bool
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"reward": self.reward, "success": self.success, "error": self.error}


FINAL_ANSWER = re.compile(r"####\s*(-?\d+)")


def score_final_answer(completion: str, answer: str) -> Score:
    """A terse answer: the integer after the last ``####`` against the reference; nothing
    else of the completion is read."""
    found = FINAL_ANSWER.findall(completion)
    if not found:
        return Score(0.0, False, "no #### answer")
    ok = found[-1] == str(answer).strip()
    return Score(float(ok), ok)


def held_out(ids: Iterable[str], fraction: float) -> set[str]:
    """A fixed ``fraction`` of ``ids`` (at least one where the fraction is above 0), the
    same for every process and every order the ids come in."""
    order = sorted(ids)
    if fraction <= 0 or not order:
        return set()
    random.Random(0).shuffle(order)
    return set(order[: max(1, int(len(order) * fraction))])


class Task(ABC):
    name: str

    @abstractmethod
    def problems(self, split: str = "train", seed: int = 0) -> Iterator[Problem]:
        """Problems of a split ("train" or "test"); train may be endless."""

    @abstractmethod
    def verify(self, completion: str, fields: dict[str, Any]) -> Score:
        """Score one completion; never raises for anything the completion contains."""

    def problem(self, prompt_id: str) -> Problem:
        """The problem with this id (the actor scores by id); tasks with an index override."""
        raise KeyError(prompt_id)

    def reference_spans(self, problem: Problem) -> list[tuple[int, int]]:
        """Character spans of ``problem.reference`` whose teacher-forced log-probability is
        a measure of the policy's knowledge (none by default)."""
        return []

    def score(self, completion: str, problem: Problem) -> Score:
        return self.verify(completion, {"answer": problem.answer, **problem.fields})


class Verifier(Protocol):
    def verify(self, completion: str, fields: dict[str, Any]) -> Score: ...


class IndexedTask(Task):
    """A fixed, id-indexed set of problems and a verifier. ``test_ids`` are held out; the
    train split cycles endlessly, the test split is read once."""

    def __init__(self, name: str, problems: Iterable[Problem], verifier: Verifier, test_ids: set[str]) -> None:
        self.name = name
        self.verifier = verifier
        self.by_id = {p.prompt_id: p for p in problems}
        self.order = list(self.by_id)
        self.test_ids = test_ids

    def problems(self, split: str = "train", seed: int = 0) -> Iterator[Problem]:
        pool = [self.by_id[i] for i in self.order if (i in self.test_ids) == (split == "test")]
        random.Random(seed).shuffle(pool)
        while True:
            yield from pool
            if split == "test":
                return

    def problem(self, prompt_id: str) -> Problem:
        return self.by_id[prompt_id]

    def verify(self, completion: str, fields: dict[str, Any]) -> Score:
        return self.verifier.verify(completion, fields)
