"""reasoning-gym tasks (countdown, chain_sum, gsm_symbolic, ...): its generators make the
problems and its scorers are the verifier. The final answer is read after the last
``####``, else from ``<answer>…</answer>``, else the last non-empty line."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from actors.tasks.base import Problem, Score, Task

TAGGED = re.compile(r"<answer>(.*?)</answer>", re.S)
HASHES = re.compile(r"####\s*([^\n]+)")
INSTRUCTION = "\nGive the final answer after ####."


def final_answer(completion: str) -> str:
    for pattern in (HASHES, TAGGED):
        found = pattern.findall(completion)
        if found:
            return found[-1].strip()
    lines = [line for line in completion.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


class GymTask(Task):
    def __init__(self, dataset: str, size: int = 2000, seed: int = 0) -> None:
        try:
            import reasoning_gym
        except ImportError as err:
            raise ImportError("gym tasks need the reasoning-gym package (pip install reasoning-gym)") from err
        self.name = f"gym:{dataset}"
        self.dataset_name = dataset
        self.data = reasoning_gym.create_dataset(dataset, size=size, seed=seed)

    def _problem(self, index: int) -> Problem:
        entry = self.data[index]
        return Problem(f"{self.dataset_name}:{index}", entry["question"] + INSTRUCTION,
                       str(entry["answer"]), fields={"index": index})

    def problems(self, split: str = "train", seed: int = 0) -> Iterator[Problem]:
        pool = [i for i in range(len(self.data)) if (i % 10 == 0) == (split == "test")]
        while True:
            yield from (self._problem(i) for i in pool)
            if split == "test":
                return

    def problem(self, prompt_id: str) -> Problem:
        return self._problem(int(prompt_id.rsplit(":", 1)[1]))

    def verify(self, completion: str, fields: dict[str, Any]) -> Score:
        try:
            entry = self.data[int(fields["index"])]
            reward = float(self.data.score_answer(answer=final_answer(completion), entry=entry))
        except Exception as err:  # a scorer crash on odd output is a wrong answer
            return Score(0.0, False, f"{type(err).__name__}: {err}")
        return Score(reward, reward >= 1.0)
