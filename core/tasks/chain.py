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

The **any-order chain** (task ``chain-any``) has several valid paths per problem. Its nine
functions commute: each is a shift in a hidden relabelling of the digits,
f_c(x) = π(π⁻¹(x) + c mod 10) for c = 1…9, so applying a set of them gives the same value
in every order::

    prompt:    "Start at 3. Apply a c f in any order."
    solutions: "a3=…, c…=…, f…=…. #### 6"   and   "f3=…, a…=…, c…=…. #### 6"   and …

A problem is a start and a set of distinct functions (the prompt lists them sorted, so a
problem has one id); the reference applies them in the listed order. Two paths share the
entries of their common prefix sets (and of prefix sets with the same shift sum), so a
successful peer on another path still shows some of the entries a failed attempt needs.
Problems: 90 at k = 1, 360 at k = 2, 1,260 at k = 4, 840 at k = 6; 10% held out.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from core.tasks.base import Problem, Score, Task, score_final_answer

FUNCTIONS = "abcdef"
DOMAIN = 10
LENGTHS = (1, 2, 4, 6)
TABLE_SEED = "chain-tables-v1"
COMMUTING_SEED = "chain-any-relabelling-v1"
STEP = re.compile(r"[a-z]\d=(\d)")
ANY_ORDER = " in any order"
PROMPT = re.compile(rf"^Start at (\d)\. Apply ([a-z](?: [a-z])*)({ANY_ORDER})?\.$")


def tables(seed: str = TABLE_SEED) -> dict[str, list[int]]:
    """The fixed functions: one random permutation of the domain each."""
    rng = random.Random(seed)
    out = {}
    for name in FUNCTIONS:
        values = list(range(DOMAIN))
        rng.shuffle(values)
        out[name] = values
    return out


def commuting_tables(seed: str = COMMUTING_SEED) -> dict[str, list[int]]:
    """Nine commuting permutations: the c-th letter is f_c(x) = π(π⁻¹(x) + c mod 10) for
    one fixed random relabelling π of the digits."""
    relabel = list(range(DOMAIN))
    random.Random(seed).shuffle(relabel)
    position = {v: i for i, v in enumerate(relabel)}
    return {name: [relabel[(position[x] + c) % DOMAIN] for x in range(DOMAIN)]
            for c, name in enumerate("abcdefghi", start=1)}


TABLES = tables()


@dataclass(frozen=True)
class World:
    """What tells one chain task from another: its functions, their tables, and whether a
    problem's functions are a set to apply in any order or a sequence."""

    name: str
    table: dict[str, list[int]]
    any_order: bool

    @property
    def functions(self) -> str:
        return "".join(self.table)

    def draw_functions(self, rng: random.Random, k: int) -> list[str]:
        if self.any_order:
            return sorted(rng.sample(self.functions, k))
        return [rng.choice(self.functions) for _ in range(k)]

    def prompt(self, start: int, functions: Sequence[str]) -> str:
        return f"Start at {start}. Apply {' '.join(functions)}{ANY_ORDER if self.any_order else ''}."


TABLE_CHAIN = World("chain", TABLES, any_order=False)
ANY_ORDER_CHAIN = World("chain-any", commuting_tables(), any_order=True)


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


def make_problem(start: int, functions: Sequence[str], world: World = TABLE_CHAIN) -> Problem:
    chain = steps(start, functions, world.table)
    prompt = world.prompt(start, functions)
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
    def __init__(self, lengths: Sequence[int] = LENGTHS, world: World = TABLE_CHAIN) -> None:
        self.lengths = tuple(lengths)
        self.world = world
        self.name = world.name

    def draw(self, rng: random.Random, k: int | None = None) -> Problem:
        k = rng.choice(self.lengths) if k is None else k
        return make_problem(rng.randrange(DOMAIN), self.world.draw_functions(rng, k), self.world)

    def problems(self, split: str = "train", seed: int = 0, k: int | None = None) -> Iterator[Problem]:
        """Endless problems of a split, every path length in turn unless ``k`` is given
        (a split's problems repeat: k = 1 has 54 train and 6 test problems)."""
        rng = random.Random(f"{self.name}:{split}:{seed}:{k}")
        while True:
            p = self.draw(rng, k)
            if is_test(p.prompt_id) == (split == "test"):
                yield p

    def problem(self, prompt_id: str) -> Problem:
        start, functions = parse_prompt(prompt_id)
        problem = make_problem(start, functions, self.world)
        canonical = not self.world.any_order or functions == sorted(set(functions))
        if problem.prompt_id != prompt_id or not canonical:
            raise KeyError(prompt_id)  # the other chain task's prompt, or not one problem's id
        return problem

    def reference_spans(self, problem: Problem) -> list[tuple[int, int]]:
        """The intermediate values of the reference chain (each step's output)."""
        return [(m.start(1), m.end(1)) for m in STEP.finditer(problem.reference or "")]

    def verify(self, completion: str, fields: dict[str, Any]) -> Score:
        return score_final_answer(completion, fields["answer"])
