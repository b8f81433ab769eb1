"""The chain tasks against computations done here, step by step."""

from __future__ import annotations

import itertools

import pytest

from core.tasks import make_task
from core.tasks.chain import (
    ANY_ORDER_CHAIN,
    DOMAIN,
    FUNCTIONS,
    LENGTHS,
    TABLE_CHAIN,
    TABLES,
    ChainTask,
    held_out,
    make_problem,
    steps,
    tables,
)


def test_tables_are_fixed_permutations_of_the_digits():
    assert tables() == TABLES  # the same world on every machine
    for f in FUNCTIONS:
        assert sorted(TABLES[f]) == list(range(DOMAIN))
    assert len({tuple(t) for t in TABLES.values()}) == len(FUNCTIONS)


def test_a_problem_writes_every_intermediate_value_and_a_terse_answer():
    p = make_problem(3, ["c", "a", "f"])
    x1 = TABLES["c"][3]
    x2 = TABLES["a"][x1]
    x3 = TABLES["f"][x2]
    assert p.prompt == "Start at 3. Apply c a f."
    assert p.reference == f"c3={x1}, a{x1}={x2}, f{x2}={x3}. #### {x3}"
    assert p.answer == str(x3) and p.fields == {"k": 3}
    assert ChainTask().problem(p.prompt_id) == p


def test_the_verifier_reads_only_the_final_answer():
    task = make_task("chain")
    p = make_problem(5, ["b", "d"])
    right, wrong = p.answer, str((int(p.answer) + 1) % DOMAIN)
    assert task.score(p.reference, p).success
    assert task.score(f"nonsense. #### {right}", p).success  # the path is not read
    assert not task.score(p.reference.replace(f"#### {right}", f"#### {wrong}"), p).success
    assert not task.score(p.reference.split(" ####")[0], p).success  # no answer
    assert task.score(f"#### {wrong} then #### {right}", p).success  # the last one counts


@pytest.mark.parametrize("world", [TABLE_CHAIN, ANY_ORDER_CHAIN], ids=lambda w: w.name)
def test_held_out_problems_are_disjoint_from_training_ones_for_every_length(world):
    task = ChainTask(world=world)
    for k in LENGTHS:
        train = [p.prompt_id for p in itertools.islice(task.problems("train", k=k), 50)]
        test = [p.prompt_id for p in itertools.islice(task.problems("test", k=k), 50)]
        assert all(world.is_test(t) for t in test) and not any(world.is_test(t) for t in train)
        assert all(len(t.split("Apply ")[1].removesuffix(" in any order.").split()) == k for t in test)
    every_k2 = [world.prompt(s, fs) for s in range(DOMAIN) for fs in world.function_lists(2)]
    held = [t for t in every_k2 if world.is_test(t)]
    assert 0.5 / world.held_out_every < len(held) / len(every_k2) < 1.5 / world.held_out_every


@pytest.mark.parametrize("world", [TABLE_CHAIN, ANY_ORDER_CHAIN], ids=lambda w: w.name)
def test_the_test_split_deals_every_held_out_problem_once_before_any_repeats(world):
    task = ChainTask(world=world)
    for k in LENGTHS:
        size = len(held_out(world, k))
        n = min(size, 300)
        dealt = [p.prompt_id for p in itertools.islice(task.problems("test", seed=3, k=k), n)]
        assert len(set(dealt)) == n, f"k = {k}: {n} draws hold {len(set(dealt))} distinct problems"
    mixed = [p.fields["k"] for p in itertools.islice(task.problems("test"), 4 * len(LENGTHS))]
    assert mixed == list(LENGTHS) * 4  # every length in turn
    other_seed = [p.prompt_id for p in itertools.islice(task.problems("test", seed=4, k=4), 20)]
    assert other_seed != [p.prompt_id for p in itertools.islice(task.problems("test", seed=3, k=4), 20)]


def test_the_any_order_chain_holds_out_at_least_200_problems_where_it_has_them():
    counts = {k: len(held_out(ANY_ORDER_CHAIN, k)) for k in LENGTHS}
    assert counts[4] >= 200 and counts[6] >= 200, counts
    totals = {k: DOMAIN * len(list(ANY_ORDER_CHAIN.function_lists(k))) for k in LENGTHS}
    assert totals[1] < 200 and totals[2] < 400  # k = 1, 2 cannot: 90 and 360 problems in all


def test_any_order_functions_commute_so_every_order_is_a_valid_path():
    table = ANY_ORDER_CHAIN.table
    assert len(table) == 9 and all(sorted(t) == list(range(DOMAIN)) for t in table.values())
    p = make_problem(3, ["a", "c", "f"], ANY_ORDER_CHAIN)
    assert p.prompt == "Start at 3. Apply a c f in any order."
    paths = {tuple(steps(3, order, table)) for order in itertools.permutations("acf")}
    assert len(paths) == 6  # six different solution texts …
    assert {path[-1][2] for path in paths} == {int(p.answer)}  # … with one answer
    task = make_task("chain-any")
    assert all(task.score(f"{', '.join(f'{f}{x}={y}' for f, x, y in path)}. #### {p.answer}", p).success
               for path in paths)
    assert task.problem(p.prompt_id) == p


def test_an_any_order_problem_is_a_set_of_distinct_functions_named_once():
    task = make_task("chain-any")
    for p in itertools.islice(task.problems("train"), 200):
        functions = p.prompt.split("Apply ")[1].removesuffix(" in any order.").split()
        assert functions == sorted(set(functions)) and len(functions) == p.fields["k"]
    for other in ("Start at 3. Apply f a in any order.", "Start at 3. Apply a a in any order.", "Start at 3. Apply a c."):
        with pytest.raises(KeyError):
            task.problem(other)  # not a problem's id: unsorted, repeated, or the table chain's
    every_k4 = [make_problem(s, list(fs), ANY_ORDER_CHAIN).prompt_id
                for s in range(DOMAIN) for fs in itertools.combinations("abcdefghi", 4)]
    assert len(every_k4) == 1260 and 0.2 < sum(map(ANY_ORDER_CHAIN.is_test, every_k4)) / len(every_k4) < 0.3
