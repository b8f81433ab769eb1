"""Built-in synthetic task for the credit-assignment question: a table chain.

A few fixed random functions on the digits 0–9 (the tables, world knowledge the model
learns in its warm start) are applied in sequence to a start value::

    prompt:    "Start at 3. Apply c a f."
    solution:  "c3=7, a7=1, f1=4. #### 4"

Each step writes its intermediate value; the verifier reads only the number after the
last ``####`` (a terse answer that does not reveal the intermediate values). A failed
attempt diverges from a successful one at the first wrong intermediate value. With path
length k = 1 the answer and the path coincide (the control: an answer-conditioned teacher
knows as much as a peer-conditioned one); with k = 6 the answer says nothing about where
the chain went wrong.

Problems are identified by their prompt; a fixed 10% of all (start, functions) pairs is
the test split, by a hash of the id, for every k (k = 1 has only 60 problems, 6 held out).
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

from core.tasks.base import Problem, Score, Task, score_final_answer

FUNCTIONS = "abcdef"
DOMAIN = 10
LENGTHS = (1, 2, 4, 6)
TABLE_SEED = "chain-tables-v1"
STEP = re.compile(r"[a-z]\d=(\d)")
PROMPT = re.compile(r"^Start at (\d)\. Apply ([a-z](?: [a-z])*)\.$")


def tables(seed: str = TABLE_SEED) -> dict[str, list[int]]:
    """The fixed functions: one random permutation of the domain each."""
    rng = random.Random(seed)
    out = {}
    for name in FUNCTIONS:
        values = list(range(DOMAIN))
        rng.shuffle(values)
        out[name] = values
    return out


TABLES = tables()


def steps(start: int, functions: Sequence[str], table: dict[str, list[int]] = TABLES) -> list[tuple[str, int, int]]:
    """(function, input, output) of each step of the chain."""
    out, value = [], start
    for f in functions:
        nxt = table[f][value]
        out.append((f, value, nxt))
        value = nxt
    return out


def render(chain: Sequence[tuple[str, int, int]]) -> str:
    """The solution text of a chain of (function, input, output) steps."""
    return ", ".join(f"{f}{x}={y}" for f, x, y in chain) + f". #### {chain[-1][2]}"


def make_problem(start: int, functions: Sequence[str]) -> Problem:
    chain = steps(start, functions)
    prompt = f"Start at {start}. Apply {' '.join(functions)}."
    return Problem(prompt_id=prompt, prompt=prompt, answer=str(chain[-1][2]), reference=render(chain),
                   fields={"k": len(functions)})


def parse_prompt(prompt: str) -> tuple[int, list[str]]:
    m = PROMPT.match(prompt)
    if m is None:
        raise KeyError(prompt)
    return int(m.group(1)), m.group(2).split()


def is_test(prompt_id: str) -> bool:
    return zlib.crc32(prompt_id.encode()) % 10 == 0


class ChainTask(Task):
    name = "chain"

    def __init__(self, lengths: Sequence[int] = LENGTHS) -> None:
        self.lengths = tuple(lengths)

    def draw(self, rng: random.Random, k: int | None = None) -> Problem:
        k = rng.choice(self.lengths) if k is None else k
        return make_problem(rng.randrange(DOMAIN), [rng.choice(FUNCTIONS) for _ in range(k)])

    def problems(self, split: str = "train", seed: int = 0, k: int | None = None) -> Iterator[Problem]:
        """Endless problems of a split, every path length in turn unless ``k`` is given
        (a split's problems repeat: k = 1 has 54 train and 6 test problems)."""
        rng = random.Random(f"chain:{split}:{seed}:{k}")
        while True:
            p = self.draw(rng, k)
            if is_test(p.prompt_id) == (split == "test"):
                yield p

    def problem(self, prompt_id: str) -> Problem:
        return make_problem(*parse_prompt(prompt_id))

    def reference_spans(self, problem: Problem) -> list[tuple[int, int]]:
        """The intermediate values of the reference chain (each step's output)."""
        return [(m.start(1), m.end(1)) for m in STEP.finditer(problem.reference or "")]

    def verify(self, completion: str, fields: dict[str, Any]) -> Score:
        return score_final_answer(completion, fields["answer"])
