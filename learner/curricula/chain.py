"""The table chain's warm start: world knowledge with honest uncertainty, and in-context
skills whose data says nothing about which values are right.

World knowledge (``Beliefs``): 30% of the table entries are *hard*: the model is taught
one fixed confusable wrong value there 70% of the time and the right one 30%; the rest are
taught right. Each step is then right with probability ≈ 0.8, and a failed chain fails at
a hard entry — which a successful peer's chain shows and reinforcement learning can fix.

The mixture (fractions of a batch):

- 0.40 plain: prompt → a chain sampled from the beliefs (the student's own distribution);
- 0.30 peer: HSD teacher view with a peer chain (itself sampled from the beliefs: the
  skill is copying, not knowing which chain is right) → 70% of the time that chain, 30% a
  chain that leaves it at one step and goes on from its own value (re-synchronising after
  a deviation); the loss skips the deviating value, so the teacher learns to follow a
  deviated prefix, never to deviate;
- 0.10 answer: OPSD teacher view with the chain's own final value as the reference answer
  → the chain (the answer says where the chain ends, nothing about its intermediate values);
- 0.20 revision: SD-Zero reviser view of an attempt (from the beliefs) with the phrase for
  its reward → for a wrong attempt, an independent chain from the beliefs (the reviser
  starts out as good as the student; a real SRT phase teaches it to do better), for a right
  one, the attempt itself ("let me rephrase").

Only train-split problems are used; held-out problems are never seen. The same scaffolding
(:class:`ChainCurriculum`) serves the any-order chain (:mod:`learner.curricula.chain_any`)
with its own world, beliefs and peer targets.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.prompts import render_prompt_ids
from core.tasks.chain import DOMAIN, TABLE_CHAIN, ChainTask, World, parse_prompt, render
from core.views import student_input
from learner.curricula import Example
from methods.hsd import hsd_input
from methods.opsd import opsd_input
from methods.srt import srt_input

# The copy skills (the prompt's functions in order, each step's input from the previous
# output, a peer's chain) form between steps 300 and 600 at lr 1e-3; at 3e-3 they did not
# form in 800 steps (the loss stayed at 0.88 a token, against ≈ 0.04 once they have).
STEPS, LR = 2500, 1e-3
MIXTURE = (("plain", 0.40), ("peer", 0.30), ("answer", 0.10), ("revision", 0.20))
DEVIATED = 0.3  # of the peer examples: the target leaves the peer at one step
BELIEF_SEED = "chain-beliefs-v1"
HARD_FRACTION = 0.3
# probability of the confusable value at a hard entry: above one half, so that the student
# prefers the wrong value there and a peer that shows the right one carries information
CONFUSION = 0.7

Step = tuple[str, int, int]
Span = tuple[int, int]  # [start, end) characters of a target's text


@dataclass(frozen=True)
class Beliefs:
    """What the warm start teaches of a world's tables: at each hard entry (function, input)
    the values it believes, with their weights (summing to 1, the right value among them);
    every other entry is believed right."""

    table: dict[str, list[int]]
    candidates: dict[tuple[str, int], tuple[tuple[int, float], ...]]

    def distribution(self, f: str, x: int) -> tuple[tuple[int, float], ...]:
        return self.candidates.get((f, x), ((self.table[f][x], 1.0),))

    def sample(self, f: str, x: int, rng: random.Random) -> int:
        believed = self.candidates.get((f, x))
        if believed is None:
            return self.table[f][x]
        u = rng.random()  # one draw an entry, whatever the number of values believed
        for value, weight in believed[:-1]:
            if u < weight:
                return value
            u -= weight
        return believed[-1][0]

    def chains(self, start: int, functions: Sequence[str]) -> list[tuple[list[Step], float]]:
        """Every chain the beliefs can sample, with its probability (at most 3^k)."""
        out: list[tuple[list[Step], float]] = [([], 1.0)]
        for f in functions:
            out = [(chain + [(f, x, y)], p * w) for chain, p in out
                   for x in [chain[-1][2] if chain else start] for y, w in self.distribution(f, x)]
        return out

    def answers(self, start: int, functions: Sequence[str]) -> dict[int, float]:
        """P(final value = a) under the beliefs."""
        out: dict[int, float] = {}
        for chain, p in self.chains(start, functions):
            out[chain[-1][2]] = out.get(chain[-1][2], 0.0) + p
        return out

    def chain_excluding(self, start: int, functions: Sequence[str], answer: int, rng: random.Random) -> list[Step]:
        """A chain sampled from the beliefs conditioned on its final value not being
        ``answer``: what a reviser told "this response is wrong" knows (the reward only)."""
        kept = [(chain, p) for chain, p in self.chains(start, functions) if chain[-1][2] != answer]
        if not kept:
            raise ValueError(f"the beliefs put all their weight on answer {answer}: nothing to revise to")
        chains, weights = zip(*kept, strict=True)
        return rng.choices(chains, weights)[0]

    def chain(self, start: int, functions: Sequence[str], rng: random.Random,
              shown: dict[tuple[str, int], int] | None = None) -> list[Step]:
        """A chain sampled from the beliefs, taking the value ``shown`` has for an entry
        where it has one (a peer's entries, for a teacher that looks them up)."""
        out, value = [], start
        for f in functions:
            nxt = shown[(f, value)] if shown and (f, value) in shown else self.sample(f, value, rng)
            out.append((f, value, nxt))
            value = nxt
        return out


def beliefs(world: World = TABLE_CHAIN, seed: str = BELIEF_SEED) -> Beliefs:
    """One confusable wrong value at each hard entry, believed ``CONFUSION`` of the time."""
    rng = random.Random(seed)
    candidates = {}
    for f in world.functions:
        for x in range(DOMAIN):
            if rng.random() < HARD_FRACTION:
                wrong = rng.choice([v for v in range(DOMAIN) if v != world.table[f][x]])
                candidates[(f, x)] = ((wrong, CONFUSION), (world.table[f][x], 1 - CONFUSION))
    return Beliefs(world.table, candidates)


BELIEFS = beliefs()


def deviate(chain: Sequence[Step], rng: random.Random, beliefs: Beliefs = BELIEFS,
            shown: dict[tuple[str, int], int] | None = None) -> tuple[list[Step], int]:
    """A chain that leaves ``chain`` at one step (another value there) and goes on from its
    own value with the beliefs (and ``shown``'s entries); returns it and the index of the
    deviating step."""
    j = rng.randrange(len(chain))
    f, x, y = chain[j]
    out = list(chain[:j]) + [(f, x, rng.choice([v for v in range(DOMAIN) if v != y]))]
    rest = beliefs.chain(out[-1][2], [g for g, _, _ in chain[j + 1:]], rng, shown)
    return out + rest, j


def value_span(chain: Sequence[Step], step: int) -> Span:
    """Characters of step ``step``'s value in ``render(chain)``."""
    end = len(render(chain[: step + 1]).split(". ####")[0])
    return end - len(str(chain[step][2])), end


def function_span(chain: Sequence[Step], step: int) -> Span:
    """Characters of step ``step``'s function name in ``render(chain)``."""
    start = value_span(chain, step)[0] - len(f"{chain[step][0]}{chain[step][1]}=")
    return start, start + len(chain[step][0])


def _target(tokenizer, chain: Sequence[Step], skip: Span | None = None) -> tuple[list[int], list[bool] | None]:
    """Token ids of the rendered chain + EOS, and (with ``skip``) a mask that leaves out the
    tokens of those characters."""
    encoded = tokenizer(render(chain), add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"]) + [tokenizer.eos_token_id]
    if skip is None:
        return ids, None
    trained = [end <= skip[0] or start >= skip[1] for start, end in encoded["offset_mapping"]] + [True]
    return ids, trained


def table_peer_target(peer: list[Step], rng: random.Random) -> tuple[list[Step], Span | None]:
    """The table chain's HSD target for a peer chain: the peer, or (``DEVIATED``) a chain
    that leaves it at one step, that step's value skipped by the loss."""
    if rng.random() >= DEVIATED:
        return peer, None
    deviated, j = deviate(peer, rng)
    return deviated, value_span(deviated, j)


@dataclass(frozen=True)
class ChainCurriculum:
    world: World
    beliefs: Beliefs
    peer_target: Callable[[list[Step], random.Random], tuple[list[Step], Span | None]]
    # after a wrong attempt: a chain from the beliefs with another answer than the attempt's
    # (what the reward says), not an independent one
    revision_excludes: bool = False

    def order(self, functions: list[str], rng: random.Random) -> list[str]:
        """The order a chain applies the prompt's functions in: any, where the world allows."""
        return rng.sample(functions, len(functions)) if self.world.any_order else functions

    def example(self, tokenizer, rng: random.Random) -> Example:
        task = ChainTask(world=self.world)
        problem = task.draw(rng)
        while self.world.is_test(problem.prompt_id):
            problem = task.draw(rng)
        start, functions = parse_prompt(problem.prompt_id)
        kind = rng.choices(*zip(*MIXTURE, strict=True))[0]
        chain = self.beliefs.chain(start, self.order(functions, rng), rng)
        if kind == "plain":
            return Example(student_input(render_prompt_ids(tokenizer, problem.prompt), _target(tokenizer, chain)[0]))
        if kind == "peer":
            ids, trained = _target(tokenizer, *self.peer_target(chain, rng))
            return Example(hsd_input(tokenizer, problem.prompt, ids, render(chain)), trained)
        if kind == "answer":
            return Example(opsd_input(tokenizer, problem.prompt, _target(tokenizer, chain)[0], str(chain[-1][2])))
        attempt = _target(tokenizer, chain)[0]
        success = chain[-1][2] == int(problem.answer)
        if success:
            revision = attempt
        elif self.revision_excludes:
            revision = _target(tokenizer, self.beliefs.chain_excluding(
                start, self.order(functions, rng), chain[-1][2], rng))[0]
        else:
            revision = _target(tokenizer, self.beliefs.chain(start, self.order(functions, rng), rng))[0]
        return Example(srt_input(tokenizer, problem.prompt, attempt, success, revision))


example = ChainCurriculum(TABLE_CHAIN, BELIEFS, table_peer_target).example
