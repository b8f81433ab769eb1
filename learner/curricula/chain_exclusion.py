"""The exclusion chain's warm start: the table chain's mixture (:mod:`learner.curricula.chain`)
with beliefs under which a failed attempt is evidence, and a reviser taught to use it.

World knowledge: 12 of the 60 entries are hard, and at a hard entry the model believes
three values with weights ``WEIGHTS`` (0.55 / 0.4 / 0.05); the right value takes the first,
second or third place with those same probabilities, so the beliefs are calibrated and the
right value is the likeliest at only about half the hard entries. A fresh attempt is right
at a hard entry with probability Σ w² = 0.465.

Revision: after a wrong attempt the target is a chain sampled from the beliefs *conditioned
on its answer differing from the attempt's* — the reward, never the ground truth; after a
right one, the attempt itself. At k = 1 a failure excludes the attempt's value, and the
remaining weights renormalise (a right value believed 0.55 rises to 0.92 or 0.58 when the
value believed 0.4 or 0.05 was refuted); on a long chain the answer alone excludes less.
Fewer hard entries than the table chain's 30% keep most failed chains to one wrong entry,
so that a reviser's doubt can land on it: on the held-out evaluation a Bayes reviser puts
0.76 of its KL from the generator at the mistake, against 0.52 with 30% hard.
:func:`learner.curricula.bayes_reviser.revision_bayes` computes exactly, by enumerating
every chain the beliefs can sample, what such a reviser can reach on given problems: the
ceiling the gates print beside the measured reviser (``hsd gates``).
"""

from __future__ import annotations

import random

from core.tasks.chain import DOMAIN, EXCLUSION_CHAIN, World
from learner.curricula.chain import (
    DEVIATED,
    Beliefs,
    ChainCurriculum,
    Span,
    Step,
    deviate,
    value_span,
)

STEPS, LR = 3500, 1e-3
HARD_ENTRIES = 12
# the three values believed at a hard entry, likeliest first. With (0.5, 0.3, 0.2) a failure
# says less: a Bayes reviser gains +0.11 over a fresh attempt on the held-out evaluation,
# against +0.23 with these
WEIGHTS = (0.55, 0.4, 0.05)


def exclusion_beliefs(world: World = EXCLUSION_CHAIN, seed: str = "chain-exclusion-beliefs-v1") -> Beliefs:
    """Three believed values at each of ``HARD_ENTRIES`` entries, the right one in place i
    with probability ``WEIGHTS[i]``."""
    rng = random.Random(seed)
    candidates = {}
    entries = [(f, x) for f in world.functions for x in range(DOMAIN)]
    for f, x in sorted(rng.sample(entries, HARD_ENTRIES)):
        right = world.table[f][x]
        values = rng.sample([v for v in range(DOMAIN) if v != right], len(WEIGHTS) - 1)
        values.insert(rng.choices(range(len(WEIGHTS)), WEIGHTS)[0], right)
        candidates[(f, x)] = tuple(zip(values, WEIGHTS, strict=True))
    return Beliefs(world.table, candidates)


BELIEFS = exclusion_beliefs()


def peer_target(peer: list[Step], rng: random.Random) -> tuple[list[Step], Span | None]:
    """The table chain's HSD target (the peer, or a chain that deviates from it at one
    step, that value skipped by the loss), the rest sampled from these beliefs."""
    if rng.random() >= DEVIATED:
        return peer, None
    deviated, j = deviate(peer, rng, BELIEFS)
    return deviated, value_span(deviated, j)


example = ChainCurriculum(EXCLUSION_CHAIN, BELIEFS, peer_target, revision_excludes=True).example
