"""The any-order chain's warm start: the table chain's mixture (:mod:`learner.curricula.chain`)
on commuting functions, with the order of a chain one more thing the model chooses.

- plain: the prompt's functions in a uniformly random order, each value from the beliefs
  (30% hard entries, the confusable value 70% of the time there), so that the student's
  successful samples take many paths and a peer is rarely the reference;
- peer: HSD view with a peer chain (random order, beliefs) → ``COPIED`` the peer; else a
  chain that *departs* from the peer's order at one step (another of the remaining
  functions there, the rest in the peer's order) or that *deviates* from a peer's value at
  one step; the departing name or deviating value is skipped by the loss, so the teacher
  learns to follow a departed prefix, never to depart. Every target takes the peer's value
  at an entry (function, input) the peer shows and the beliefs' elsewhere: the skill is
  looking up a peer's entries, wherever in its chain they stand, not knowing which are
  right;
- answer and revision: as the table chain's, every chain in a random order.

Held-out problems (a function set and a start) are never seen, in any order.
"""

from __future__ import annotations

import random

from core.tasks.chain import ANY_ORDER_CHAIN
from learner.curricula.chain import (
    Beliefs,
    ChainCurriculum,
    Span,
    Step,
    beliefs,
    deviate,
    function_span,
    value_span,
)

STEPS, LR = 3500, 1e-3
COPIED, DEPARTED = 0.85, 0.1  # of the peer examples; the rest deviate from a value
BELIEFS = beliefs(ANY_ORDER_CHAIN, seed="chain-any-beliefs-v1")


def depart(peer: list[Step], rng: random.Random, beliefs: Beliefs = BELIEFS) -> tuple[list[Step], int]:
    """A chain that applies the peer's functions in the peer's order up to step ``j``, one of
    the later ones there, and the rest in the peer's order, taking the peer's value at every
    entry it shows; returns it and ``j``."""
    order = [f for f, _, _ in peer]
    j = rng.randrange(len(order) - 1)
    moved = rng.choice(order[j + 1:])
    departed = order[:j] + [moved] + [f for f in order[j:] if f != moved]
    return beliefs.chain(peer[0][1], departed, rng, shown=shown_entries(peer)), j


def shown_entries(chain: list[Step]) -> dict[tuple[str, int], int]:
    return {(f, x): y for f, x, y in chain}


def peer_target(peer: list[Step], rng: random.Random) -> tuple[list[Step], Span | None]:
    draw = rng.random()
    if draw < COPIED:
        return peer, None
    if draw < COPIED + DEPARTED and len(peer) > 1:
        departed, j = depart(peer, rng)
        return departed, function_span(departed, j)
    deviated, j = deviate(peer, rng, BELIEFS, shown=shown_entries(peer))
    return deviated, value_span(deviated, j)


example = ChainCurriculum(ANY_ORDER_CHAIN, BELIEFS, peer_target).example
