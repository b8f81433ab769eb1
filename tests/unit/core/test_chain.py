"""The table-chain task against computations done here, step by step."""

from __future__ import annotations

import itertools

from core.tasks import make_task
from core.tasks.chain import (
    DOMAIN,
    FUNCTIONS,
    LENGTHS,
    TABLES,
    ChainTask,
    is_test,
    make_problem,
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


def test_held_out_problems_are_disjoint_from_training_ones_for_every_length():
    task = ChainTask()
    for k in LENGTHS:
        train = [p.prompt_id for p in itertools.islice(task.problems("train", k=k), 50)]
        test = [p.prompt_id for p in itertools.islice(task.problems("test", k=k), 50)]
        assert all(is_test(t) for t in test) and not any(is_test(t) for t in train)
        assert all(len(t.split("Apply ")[1].split()) == k for t in test)
    every_k2 = [make_problem(s, fs).prompt_id for s in range(DOMAIN) for fs in itertools.product(FUNCTIONS, repeat=2)]
    held = [t for t in every_k2 if is_test(t)]
    assert 0.05 < len(held) / len(every_k2) < 0.15
