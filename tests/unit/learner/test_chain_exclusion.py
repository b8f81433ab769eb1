"""The exclusion chain (SD-Zero's test bed): its beliefs, a reviser's curriculum that reads
only the reward, and the exact Bayes reviser the gates print beside the measured one."""

from __future__ import annotations

import itertools
import math
import random
import re

import pytest

from core.tasks import make_task
from core.tasks.chain import EXCLUSION_CHAIN, TABLE_CHAIN, TABLES, World, make_problem
from learner.curricula import chain_exclusion
from learner.curricula.bayes_reviser import revision_bayes
from learner.curricula.chain import BELIEFS as TABLE_BELIEFS
from learner.curricula.chain import Beliefs
from methods.templates import DEFAULT

ANSWER = re.compile(r"#### (\d)")


def test_the_exclusion_chain_has_tables_of_its_own_and_a_quarter_held_out():
    assert EXCLUSION_CHAIN.table != TABLE_CHAIN.table
    task = make_task("chain-exclusion")
    held = list(itertools.islice(task.problems("test"), 1024))
    train = list(itertools.islice(task.problems("train"), 500))
    assert all(EXCLUSION_CHAIN.is_test(p.prompt_id) for p in held) and not any(
        EXCLUSION_CHAIN.is_test(p.prompt_id) for p in train)
    assert len({p.prompt_id for p in held if p.fields["k"] == 1}) >= 12  # the table chain holds out 5


def test_hard_entries_believe_three_values_the_right_one_not_always_the_likeliest():
    candidates = chain_exclusion.BELIEFS.candidates
    assert len(candidates) == chain_exclusion.HARD_ENTRIES
    places = []
    for (f, x), believed in candidates.items():
        values = [v for v, _ in believed]
        assert len(set(values)) == 3 and tuple(w for _, w in believed) == chain_exclusion.WEIGHTS
        places.append(values.index(EXCLUSION_CHAIN.table[f][x]))
    assert 0 in places and set(places) - {0}  # sometimes the likeliest, sometimes not


def test_a_revision_after_a_wrong_attempt_takes_another_answer_and_a_right_attempt_is_copied(tokenizer):
    rng, wrong, right = random.Random(7), DEFAULT.revision_wrong, DEFAULT.revision_right
    revised_right, revisions = 0, 0
    for _ in range(800):
        e = chain_exclusion.example(tokenizer, rng)
        context, response = tokenizer.decode(e.view.ids[: e.view.start]), tokenizer.decode(e.view.response)
        if wrong in context:
            prompt = context.split("user\n")[1].split("<|im_end|>")[0].strip()
            attempt = ANSWER.findall(context.split(wrong)[0])[-1]
            revision = ANSWER.findall(response)[-1]
            assert revision != attempt  # what the reward says, and all it says
            revisions += 1
            revised_right += revision == make_task("chain-exclusion").problem(prompt).answer
        elif right in context:
            assert context.split(right)[0].rstrip().endswith(response.split("<|im_end|>")[0].strip())
    assert revisions > 20 and 0 < revised_right < revisions  # a posterior sample, not the ground truth


def _one_hard_entry(believed: tuple[tuple[int, float], ...], right: int) -> tuple[Beliefs, World]:
    table = {f: list(v) for f, v in TABLES.items()}
    table["a"][0] = right
    return Beliefs(table, {("a", 0): believed}), World("one-entry", table, any_order=False, held_out_every=10)


def test_the_bayes_reviser_at_one_hard_entry_by_hand():
    beliefs, world = _one_hard_entry(((3, 0.55), (5, 0.4), (7, 0.05)), right=5)
    r = revision_bayes(beliefs, [make_problem(0, ["a"], world)])
    assert math.isclose(r.fresh, 0.4) and math.isclose(r.failure_rate, 0.6)
    assert math.isclose(r.posterior, (0.55 * 0.4 / 0.45 + 0.05 * 0.4 / 0.95) / 0.6)
    assert math.isclose(r.map, 0.55 / 0.6)  # refuting 3 leaves 5 the likeliest; refuting 7 leaves 3
    assert r.localised == 1.0  # one step: all the reviser's doubt is at the mistake
    easy = next(f for f in "bcdef" if (f, 0) not in beliefs.candidates)
    assert revision_bayes(beliefs, [make_problem(0, [easy], world)]) is None  # it cannot fail


def test_on_the_table_chain_a_failure_at_k1_names_the_right_value_and_doubt_spreads_with_k():
    task = make_task("chain")
    held = list(itertools.islice(task.problems("test"), 1024))
    short = revision_bayes(TABLE_BELIEFS, [p for p in held if p.fields["k"] == 1])
    long = revision_bayes(TABLE_BELIEFS, [p for p in held if p.fields["k"] == 6])
    assert short.posterior == pytest.approx(1.0) and short.fresh < 0.5
    assert long.gain < short.gain and long.localised < short.localised


def test_the_exclusion_beliefs_leave_a_reviser_room_above_the_gate():
    held = list(itertools.islice(make_task("chain-exclusion").problems("test"), 1024))
    r = revision_bayes(chain_exclusion.BELIEFS, held)
    assert r.gain >= 0.2 and r.localised >= 0.7 and r.map >= r.posterior  # G4 needs ≥ 0.10 and half the gain
    assert 0.2 < r.failure_rate < 0.5
