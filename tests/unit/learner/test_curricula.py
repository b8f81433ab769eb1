"""The table chain's warm-start data: its beliefs, deviations and the tokens the loss reads."""

from __future__ import annotations

import random

from core.tasks.chain import DOMAIN, FUNCTIONS, TABLES, render
from learner.curricula import curriculum
from learner.curricula.chain import BELIEFS, HARD_FRACTION, _target, deviate


def test_hard_entries_have_one_wrong_value_the_rest_are_taught_right():
    entries = len(FUNCTIONS) * DOMAIN
    assert abs(len(BELIEFS.confusable) / entries - HARD_FRACTION) < 0.15
    rng = random.Random(0)
    for (f, x), wrong in BELIEFS.confusable.items():
        assert wrong != TABLES[f][x]
        seen = {BELIEFS.sample(f, x, rng) for _ in range(200)}
        assert seen == {wrong, TABLES[f][x]}
    easy = next((f, x) for f in FUNCTIONS for x in range(DOMAIN) if (f, x) not in BELIEFS.confusable)
    assert {BELIEFS.sample(*easy, rng) for _ in range(50)} == {TABLES[easy[0]][easy[1]]}


def test_a_deviated_chain_leaves_the_original_once_and_goes_on_from_its_own_value():
    rng = random.Random(1)
    functions = list("cafbe")
    for _ in range(50):
        chain = BELIEFS.chain(4, functions, rng)
        deviated, j = deviate(chain, functions, rng)
        assert deviated[:j] == chain[:j] and deviated[j][2] != chain[j][2]
        assert [f for f, _, _ in deviated] == functions
        for (_, _, y), (_, x_next, _) in zip(deviated, deviated[1:], strict=False):
            assert x_next == y  # every step starts where the previous one ended


def test_the_loss_skips_exactly_the_deviating_value(tokenizer):
    chain = [("c", 3, 7), ("a", 7, 1), ("f", 1, 4)]
    ids, trained = _target(tokenizer, chain, skip_step=1)
    assert ids[:-1] == tokenizer.encode(render(chain), add_special_tokens=False)
    skipped = [i for i, t in zip(ids, trained, strict=True) if not t]
    assert tokenizer.decode(skipped) == "1" and trained.count(False) == 1
    assert trained[render(chain).index("a7=1") + 3] is False


def test_every_example_is_a_view_ending_in_its_target(tokenizer):
    example, rng = curriculum("chain").example, random.Random(2)
    for _ in range(200):
        e = example(tokenizer, rng)
        assert e.view.response[-1] == tokenizer.eos_token_id
        assert e.trained is None or (len(e.trained) == e.view.length and e.trained.count(False) == 1)
