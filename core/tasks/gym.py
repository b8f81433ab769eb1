"""reasoning-gym tasks (countdown, chain_sum, gsm_symbolic, ...): its generators make the
problems and its scorers are the verifier. The final answer is read after the last
``####``, else from ``<answer>…</answer>``, else the last non-empty line; when the scorer
rejects that, the line's last number is tried too (instruct models often end with "The
final answer is 46." whatever the instruction said)."""

from __future__ import annotations

import re
from typing import Any

from core.tasks.base import IndexedTask, Problem, Score

TAGGED = re.compile(r"<answer>(.*?)</answer>", re.S)
HASHES = re.compile(r"####\s*([^\n]+)")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
INSTRUCTION = "\nGive the final answer after ####."


def final_answer(completion: str) -> str:
    for pattern in (HASHES, TAGGED):
        found = pattern.findall(completion)
        if found:
            return found[-1].strip()
    lines = [line for line in completion.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


class GymVerifier:
    def __init__(self, data) -> None:
        self.data = data

    def verify(self, completion: str, fields: dict[str, Any]) -> Score:
        try:
            entry = self.data[int(fields["index"])]
            answer = final_answer(completion)
            reward = float(self.data.score_answer(answer=answer, entry=entry))
            numbers = NUMBER.findall(answer)
            if reward < 1.0 and numbers and numbers[-1] != answer:
                reward = max(reward, float(self.data.score_answer(answer=numbers[-1], entry=entry)))
        except Exception as err:  # a scorer crash on odd output is a wrong answer
            return Score(0.0, False, f"{type(err).__name__}: {err}")
        return Score(reward, reward >= 1.0)


def gym_task(dataset: str, size: int = 2000, seed: int = 0) -> IndexedTask:
    """A reasoning-gym dataset of ``size`` generated problems; every 10th is held out."""
    try:
        import reasoning_gym
    except ImportError as err:
        raise ImportError("gym tasks need the reasoning-gym package (pip install reasoning-gym)") from err
    data = reasoning_gym.create_dataset(dataset, size=size, seed=seed)
    problems = [Problem(f"{dataset}:{i}", data[i]["question"] + INSTRUCTION, str(data[i]["answer"]),
                        fields={"index": i}) for i in range(len(data))]
    test = {p.prompt_id for i, p in enumerate(problems) if i % 10 == 0}
    return IndexedTask(f"gym:{dataset}", problems, GymVerifier(data), test)
