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

Problems are identified by their prompt; a fixed share of all (start, functions) pairs is
the test split, by a hash of the id, for every k: 1 in 10 on the table chain (k = 1 has
only 60 problems, 5 held out by the hash; k = 2 has 360, 33 held out), 1 in 4 on the
any-order chain. The test split is dealt per k from a shuffled deck, each held-out
problem once before any repeats, so that n draws of a k hold min(n, held out at k)
distinct problems.

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
Problems: 90 at k = 1, 360 at k = 2, 1,260 at k = 4, 840 at k = 6; 1 in 4 held out (21,
87, 306 and 213 by the hash), so that k = 4 and k = 6 each have ≥ 200 distinct held-out
problems; k = 1 and k = 2 cannot, having 90 and 360 problems in all.

The **exclusion chain** (task ``chain-exclusion``) is the table chain's form on tables of
its own: its warm start (:mod:`learner.curricula.chain_exclusion`) believes three values
at a hard entry with unequal weights, the right one not always the likeliest, so that a
failed attempt's answer is evidence a reviser can use (SD-Zero's test bed). 1 in 4 is held
out, as on the any-order chain (16, 90, 256 and 256 distinct among 1,024 draws), so that
the k = 1 point, where revision knows most, rests on more than 5 problems.
"""

from __future__ import annotations

import itertools
import random
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
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
    """What tells one chain task from another: its functions, their tables, whether a
    problem's functions are a set to apply in any order or a sequence, and which share of
    the problems is held out (1 in ``held_out_every``)."""

    name: str
    table: dict[str, list[int]]
    any_order: bool
    held_out_every: int

    def __hash__(self) -> int:  # the tables are dicts; a world is known by its name (held_out's cache key)
        return hash(self.name)

    @property
    def functions(self) -> str:
        return "".join(self.table)

    def draw_functions(self, rng: random.Random, k: int) -> list[str]:
        if self.any_order:
            return sorted(rng.sample(self.functions, k))
        return [rng.choice(self.functions) for _ in range(k)]

    def function_lists(self, k: int) -> Iterator[tuple[str, ...]]:
        """Every problem's functions at length k, in a fixed order."""
        if self.any_order:
            return itertools.combinations(self.functions, k)
        return itertools.product(self.functions, repeat=k)

    def prompt(self, start: int, functions: Sequence[str]) -> str:
        return f"Start at {start}. Apply {' '.join(functions)}{ANY_ORDER if self.any_order else ''}."

    def is_test(self, prompt_id: str) -> bool:
        return zlib.crc32(prompt_id.encode()) % self.held_out_every == 0


TABLE_CHAIN = World("chain", TABLES, any_order=False, held_out_every=10)
ANY_ORDER_CHAIN = World("chain-any", commuting_tables(), any_order=True, held_out_every=4)
EXCLUSION_CHAIN = World("chain-exclusion", tables("chain-exclusion-tables-v1"), any_order=False, held_out_every=4)
WORLDS = {w.name: w for w in (TABLE_CHAIN, ANY_ORDER_CHAIN, EXCLUSION_CHAIN)}  # the chain tasks, by task name


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


@cache
def held_out(world: World, k: int) -> tuple[tuple[int, tuple[str, ...]], ...]:
    """Every held-out problem of length k, as (start, functions), in a fixed order."""
    return tuple((start, functions) for functions in world.function_lists(k) for start in range(DOMAIN)
                 if world.is_test(world.prompt(start, functions)))


class ChainTask(Task):
    def __init__(self, lengths: Sequence[int] = LENGTHS, world: World = TABLE_CHAIN) -> None:
        self.lengths = tuple(lengths)
        self.world = world
        self.name = world.name

    def draw(self, rng: random.Random, k: int | None = None) -> Problem:
        k = rng.choice(self.lengths) if k is None else k
        return make_problem(rng.randrange(DOMAIN), self.world.draw_functions(rng, k), self.world)

    def problems(self, split: str = "train", seed: int = 0, k: int | None = None) -> Iterator[Problem]:
        """Endless problems of a split: train problems drawn at random, of a random length
        unless ``k`` is given; test problems dealt from each length's deck in turn (or
        from ``k``'s), every held-out problem of a length once before any repeats."""
        rng = random.Random(f"{self.name}:{split}:{seed}:{k}")
        if split == "test":
            decks = {n: self._held_out_deck(n, rng) for n in ((k,) if k is not None else self.lengths)}
            for n in itertools.cycle(decks):
                start, functions = next(decks[n])
                yield make_problem(start, functions, self.world)
        while True:
            p = self.draw(rng, k)
            if not self.world.is_test(p.prompt_id):
                yield p

    def _held_out_deck(self, k: int, rng: random.Random) -> Iterator[tuple[int, tuple[str, ...]]]:
        problems = list(held_out(self.world, k))
        while True:
            rng.shuffle(problems)
            yield from problems

    def problem(self, prompt_id: str) -> Problem:
        start, functions = parse_prompt(prompt_id)
        problem = make_problem(start, functions, self.world)
        canonical = not self.world.any_order or functions == sorted(set(functions))
        if problem.prompt_id != prompt_id or not canonical:
            raise KeyError(prompt_id)  # the other chain task's prompt, or not one problem's id
        return problem

    def solutions(self, problem: Problem) -> list[str]:
        """Every valid solution text of a problem: the reference, and on the any-order
        chain every other order of its functions (k! paths)."""
        start, functions = parse_prompt(problem.prompt_id)
        orders = itertools.permutations(functions) if self.world.any_order else [functions]
        return [render(steps(start, order, self.world.table)) for order in orders]

    def reference_spans(self, problem: Problem) -> list[tuple[int, int]]:
        """The intermediate values of the reference chain (each step's output)."""
        return [(m.start(1), m.end(1)) for m in STEP.finditer(problem.reference or "")]

    def verify(self, completion: str, fields: dict[str, Any]) -> Score:
        return score_final_answer(completion, fields["answer"])
