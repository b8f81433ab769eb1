"""What a reviser that knows a warm start's beliefs (:class:`learner.curricula.chain.Beliefs`)
can reach after a failed attempt, computed exactly by enumerating every chain the beliefs
sample: the ceiling ``hsd gates`` prints beside the measured reviser (G4, G4-loc).

With P the beliefs' distribution over a problem's answers, t the right answer and a₀ a
failed attempt's, a fresh attempt is right with P(t); a reviser that samples from the
beliefs given "the answer is not a₀" (what the reward says) with P(t) / (1 − P(a₀)); the
likeliest answer other than a₀ is the best any reviser can do. Along the attempt's steps
the reviser's prediction of step j's value, P(v | its input) · P(answer ≠ a₀ | v, the rest),
renormalised, departs from the generator's P(v | its input) by a KL; G4-loc's reference is
the share of those KLs at the attempt's first wrong value (on the any-order chain, along
the listed order: the answers do not depend on the order, the steps do).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from core.tasks.base import Problem
from core.tasks.chain import parse_prompt, steps
from learner.curricula.chain import Beliefs, Step


@dataclass(frozen=True)
class RevisionBayes:
    """What a reviser that knows the beliefs reaches on the failed attempts at some problems
    (each problem's attempts weighted by how often they fail, as a held-out evaluation
    samples them)."""

    fresh: float  # a fresh attempt's accuracy: the bar G4 measures against
    posterior: float  # sampling from the beliefs given answer ≠ the attempt's (what chain_exclusion teaches)
    map: float  # the likeliest answer other than the attempt's (no reviser does better)
    localised: float  # mean share of KL(reviser ‖ generator) over an attempt's steps that is at its mistake
    failure_rate: float  # share of attempts that fail

    @property
    def gain(self) -> float:
        return self.posterior - self.fresh


def revision_bayes(beliefs: Beliefs, problems: Sequence[Problem]) -> RevisionBayes | None:
    """Exact, by enumeration of every chain the beliefs sample on each problem (None where
    no attempt at them can fail)."""
    answers_from: dict[tuple[int, tuple[str, ...]], dict[int, float]] = {}

    def answers(start: int, functions: tuple[str, ...]) -> dict[int, float]:
        if (start, functions) not in answers_from:
            answers_from[start, functions] = beliefs.answers(start, functions) if functions else {start: 1.0}
        return answers_from[start, functions]

    failed = fresh = posterior = best = localised = 0.0
    for problem in problems:
        start, functions = parse_prompt(problem.prompt_id)
        truth = steps(start, functions, beliefs.table)
        dist = answers(start, tuple(functions))
        right = truth[-1][2]
        p = dist.get(right, 0.0)
        for chain, weight in beliefs.chains(start, functions):
            attempt = chain[-1][2]
            if attempt == right:
                continue
            failed += weight
            fresh += weight * p
            posterior += weight * p / (1 - dist[attempt])
            others = {a: q for a, q in dist.items() if a != attempt}
            top = max(others.values())
            ties = [a for a, q in others.items() if math.isclose(q, top)]
            best += weight * (right in ties) / len(ties)
            localised += weight * _share_at_mistake(beliefs, chain, truth, answers)
    if failed == 0:
        return None
    return RevisionBayes(fresh / failed, posterior / failed, best / failed, localised / failed, failed / len(problems))


def _share_at_mistake(beliefs: Beliefs, chain: list[Step], truth: list[Step], answers) -> float:
    """KL(reviser ‖ generator) at each step of a failed chain, the reviser's prediction of
    that step's value conditioned on the answer not being the chain's; the share at the
    first wrong value."""
    attempt = chain[-1][2]
    functions = tuple(f for f, _, _ in chain)
    kl = []
    for j, (f, x, _) in enumerate(chain):
        prior = beliefs.distribution(f, x)
        kept = [(v, w * (1 - answers(v, functions[j + 1:]).get(attempt, 0.0))) for v, w in prior]
        z = sum(w for _, w in kept)
        if z == 0:  # the chain's prefix already rules out its answer being wrong: nothing to move
            kl.append(0.0)
            continue
        kl.append(sum(w / z * math.log(w / z / q) for (_, w), (_, q) in zip(kept, prior, strict=True) if w > 0))
    mistake = next(j for j, (step, right) in enumerate(zip(chain, truth, strict=True)) if step != right)
    total = sum(kl)
    return kl[mistake] / total if total > 0 else 0.0


def by_length(beliefs: Beliefs, problems: Sequence[Problem]) -> dict[int, RevisionBayes | None]:
    """:func:`revision_bayes` at each path length among the problems."""
    lengths = sorted({p.fields["k"] for p in problems})
    return {k: revision_bayes(beliefs, [p for p in problems if p.fields["k"] == k]) for k in lengths}

