"""The chains' warm-start data: beliefs, deviations, departures and the tokens the loss reads."""

from __future__ import annotations

import random

import pytest

from core.prompts import render_prompt_ids
from core.tasks.chain import (
    ANY_ORDER_CHAIN,
    DOMAIN,
    FUNCTIONS,
    TABLES,
    ChainTask,
    parse_prompt,
    render,
)
from learner.curricula import chain_any, curriculum
from learner.curricula.chain import (
    BELIEFS,
    CONFUSION,
    HARD_FRACTION,
    _target,
    deviate,
    function_span,
    value_span,
)


def test_hard_entries_have_one_wrong_value_the_rest_are_taught_right():
    entries = len(FUNCTIONS) * DOMAIN
    assert abs(len(BELIEFS.candidates) / entries - HARD_FRACTION) < 0.15
    rng = random.Random(0)
    for (f, x), ((wrong, believed), (right, _)) in BELIEFS.candidates.items():
        assert wrong != TABLES[f][x] == right and believed == CONFUSION
        draws = [BELIEFS.sample(f, x, rng) for _ in range(400)]
        assert set(draws) == {wrong, right} and abs(draws.count(wrong) / 400 - CONFUSION) < 0.1
    easy = next((f, x) for f in FUNCTIONS for x in range(DOMAIN) if (f, x) not in BELIEFS.candidates)
    assert {BELIEFS.sample(*easy, rng) for _ in range(50)} == {TABLES[easy[0]][easy[1]]}


def test_the_chains_the_beliefs_sample_are_enumerated_with_their_probabilities():
    rng, start, functions = random.Random(5), 2, list("abcdef")
    chains = BELIEFS.chains(start, functions)
    assert abs(sum(p for _, p in chains) - 1) < 1e-9 and len(chains) == len({tuple(c) for c, _ in chains})
    exact = BELIEFS.answers(start, functions)
    draws = [BELIEFS.chain(start, functions, rng)[-1][2] for _ in range(4000)]
    assert all(abs(draws.count(a) / 4000 - p) < 0.03 for a, p in exact.items())


def test_a_chain_excluding_an_answer_never_ends_there_and_is_the_conditional_of_the_beliefs():
    rng, start, functions = random.Random(6), 2, list("abcdef")
    exact = BELIEFS.answers(start, functions)
    excluded = max(exact, key=exact.get)
    draws = [BELIEFS.chain_excluding(start, functions, excluded, rng)[-1][2] for _ in range(4000)]
    assert excluded not in draws
    assert all(abs(draws.count(a) / 4000 - p / (1 - exact[excluded])) < 0.03 for a, p in exact.items() if a != excluded)
    easy = next(f for f in FUNCTIONS if (f, 0) not in BELIEFS.candidates)
    with pytest.raises(ValueError, match="nothing to revise to"):
        BELIEFS.chain_excluding(0, [easy], TABLES[easy][0], rng)


def test_a_deviated_chain_leaves_the_original_once_and_goes_on_from_its_own_value():
    rng = random.Random(1)
    functions = list("cafbe")
    for _ in range(50):
        chain = BELIEFS.chain(4, functions, rng)
        deviated, j = deviate(chain, rng)
        assert deviated[:j] == chain[:j] and deviated[j][2] != chain[j][2]
        assert [f for f, _, _ in deviated] == functions
        for (_, _, y), (_, x_next, _) in zip(deviated, deviated[1:], strict=False):
            assert x_next == y  # every step starts where the previous one ended


def test_the_loss_skips_exactly_the_deviating_value(tokenizer):
    chain = [("c", 3, 7), ("a", 7, 1), ("f", 1, 4)]
    ids, trained = _target(tokenizer, chain, skip=value_span(chain, 1))
    assert ids[:-1] == tokenizer.encode(render(chain), add_special_tokens=False)
    skipped = [i for i, t in zip(ids, trained, strict=True) if not t]
    assert tokenizer.decode(skipped) == "1" and trained.count(False) == 1
    assert trained[render(chain).index("a7=1") + 3] is False


@pytest.mark.parametrize("task", ["chain", "chain-any", "chain-exclusion"])
def test_every_example_is_a_view_ending_in_its_target(tokenizer, task):
    example, rng = curriculum(task).example, random.Random(2)
    for _ in range(200):
        e = example(tokenizer, rng)
        assert e.view.response[-1] == tokenizer.eos_token_id
        assert e.trained is None or (len(e.trained) == e.view.length and e.trained.count(False) == 1)


def test_a_departed_chain_follows_the_peer_then_another_function_then_the_peers_order():
    rng, peer_order = random.Random(3), list("bdeh")
    for _ in range(50):
        peer = chain_any.BELIEFS.chain(4, rng.sample(peer_order, 4), rng)
        departed, j = chain_any.depart(peer, rng)
        order, theirs = [f for f, _, _ in departed], [f for f, _, _ in peer]
        assert order[:j] == theirs[:j] and order[j] != theirs[j] and sorted(order) == sorted(theirs)
        assert [f for f in order if f != order[j]] == [f for f in theirs if f != order[j]]
        shown = chain_any.shown_entries(peer)
        assert all(y == shown[(f, x)] for f, x, y in departed if (f, x) in shown)  # the peer's entries looked up
        assert departed[0][1] == 4 and all(x == y for (_, _, y), (_, x, _) in zip(departed, departed[1:], strict=False))


def test_the_loss_skips_exactly_the_departing_function_name(tokenizer):
    chain = [("c", 3, 7), ("a", 7, 1), ("f", 1, 4)]
    ids, trained = _target(tokenizer, chain, skip=function_span(chain, 2))
    assert [tokenizer.decode([i]) for i, t in zip(ids, trained, strict=True) if not t] == ["f"]
    assert trained[render(chain).index("f1=4")] is False


def test_any_order_plain_examples_take_many_orders_of_a_training_problem(tokenizer):
    rng, task = random.Random(4), ChainTask(world=ANY_ORDER_CHAIN)
    orders: dict[str, set[str]] = {}
    for _ in range(400):
        e = chain_any.example(tokenizer, rng)
        text = tokenizer.decode(e.view.ids)
        prompt = text.split("user\n")[1].split("\n")[0].split("<|im_end|>")[0]
        assert not ANY_ORDER_CHAIN.is_test(prompt) and task.problem(prompt)  # a training problem's canonical prompt
        response = tokenizer.decode(e.view.ids[e.view.start:]).split(". ####")[0]
        used = [step[0] for step in response.split(", ")]
        if e.view.ids[: e.view.start] == render_prompt_ids(tokenizer, prompt):  # a plain (student) example
            assert sorted(used) == parse_prompt(prompt)[1]  # each function once
            orders.setdefault(prompt, set()).add("".join(used))
    assert len(orders) > 50 and max(len(v) for v in orders.values()) > 1  # plain examples, several paths
