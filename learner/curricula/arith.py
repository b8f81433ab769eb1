"""The arithmetic task's warm start. The mixture (fractions of a batch):
- 0.35 plain: prompt → reference solution (the task itself);
- 0.20 direct: prompt → "#### answer" with no working. The model comes out with a habit
  of answering tersely without the steps a fifth of the time or so, which it mostly gets
  wrong: a policy choice (made at the first token) that reinforcement learning can
  unlearn within a short run, while arithmetic facts it does not know take far more
  samples than a few-minute run has;
- 0.15 peer: HSD teacher view with a correct solution of the same problem → that solution
  (reading a successful peer);
- 0.10 answer: OPSD teacher view with the reference answer → the solution;
- 0.20 revision: SD-Zero reviser view of a wrong attempt with "Wait, this response is
  wrong…" → the correct solution; of a correct one with "Let me rephrase…" → itself.

Held-out (test split) problems are never seen: no answer of the evaluation set leaks in.
"""

from __future__ import annotations

import random
import re

from core.prompts import render_prompt_ids
from core.tasks.arith import ArithTask, is_test
from core.views import student_input
from learner.curricula import Example
from methods.hsd import hsd_input
from methods.opsd import opsd_input
from methods.sdzero import sdzero_input
from methods.srt import srt_input

STEPS, LR = 800, 3e-3
MIXTURE = (("plain", 0.35), ("direct", 0.20), ("peer", 0.15), ("answer", 0.10), ("revision", 0.20))


def corrupt(solution: str, rng: random.Random) -> str:
    """A plausible wrong attempt: one number of the solution changed, and the rest
    (including the final answer) recomputed no further — a wrong path."""
    numbers = list(re.finditer(r"\d+", solution))
    m = rng.choice(numbers)
    wrong = str(int(m.group()) + rng.choice([-2, -1, 1, 2, 3]))
    return solution[: m.start()] + wrong.lstrip("-") + solution[m.end():]


def example(tokenizer, rng: random.Random) -> Example:
    problem = ArithTask().draw(rng)
    while is_test(problem.prompt_id):  # held-out problems are never seen
        problem = ArithTask().draw(rng)
    kind = rng.choices(*zip(*MIXTURE, strict=True))[0]
    eos = [tokenizer.eos_token_id]
    if kind == "direct":
        guess = tokenizer.encode(f"#### {problem.answer}", add_special_tokens=False) + eos
        return Example(student_input(render_prompt_ids(tokenizer, problem.prompt), guess))
    y = tokenizer.encode(problem.reference, add_special_tokens=False) + eos
    if kind == "plain":
        return Example(student_input(render_prompt_ids(tokenizer, problem.prompt), y))
    if kind == "peer":
        return Example(hsd_input(tokenizer, problem.prompt, y, problem.reference))
    if kind == "answer":
        return Example(opsd_input(tokenizer, problem.prompt, y, problem.answer))
    if rng.random() < 0.5:
        attempt = tokenizer.encode(corrupt(problem.reference, rng), add_special_tokens=False) + eos
        return Example(srt_input(tokenizer, problem.prompt, attempt, False, y))  # wrong attempt, then the correction
    return Example(sdzero_input(tokenizer, problem.prompt, y, success=True))
