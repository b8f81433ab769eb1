from __future__ import annotations

import itertools

import pytest

from core.tasks.arith import ArithTask, is_test, make_problem, solve


@pytest.mark.parametrize(
    ("numbers", "ops", "steps", "value"),
    [
        ([7, 3, 4], ["+", "*"], ["3*4=12", "7+12=19"], 19),
        ([7, 3, 4], ["*", "-"], ["7*3=21", "21-4=17"], 17),
        ([2, 3, 4], ["-", "-"], ["2-3=-1", "-1-4=-5"], -5),
        ([2, 3, 4, 5], ["+", "*", "*"], ["3*4=12", "12*5=60", "2+60=62"], 62),
        ([9], [], [], 9),
    ],
)
def test_steps_follow_precedence(numbers, ops, steps, value):
    assert solve(numbers, ops) == (steps, value)
    expr = "".join(f"{n}{o}" for n, o in zip(numbers, ops, strict=False)) + str(numbers[-1])
    assert eval(expr) == value  # noqa: S307 - the expression is ours


def test_reference_solution_verifies_and_wrong_paths_do_not():
    task = ArithTask()
    p = make_problem([7, 3, 4], ["+", "*"])
    assert p.prompt == "Compute 7+3*4." and p.reference == "3*4=12, 7+12=19. #### 19"
    assert task.score(p.reference, p).success
    assert not task.score("7+3=10, 10*4=40. #### 40", p).success  # left-to-right: wrong path
    assert task.score("#### 5 then #### 19", p).success  # the last answer counts
    assert task.score("19", p).error == "no #### answer"


def test_splits_are_disjoint_and_ids_resolve():
    task = ArithTask()
    train = [p.prompt_id for p in itertools.islice(task.problems("train"), 300)]
    test = [p.prompt_id for p in itertools.islice(task.problems("test"), 50)]
    assert not set(train) & set(test)
    assert all(is_test(t) for t in test) and not any(is_test(t) for t in train)
    p = next(task.problems("train"))
    assert task.problem(p.prompt_id) == p
