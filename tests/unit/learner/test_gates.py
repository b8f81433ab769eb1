"""G4's bar: the student's success rate on the failed attempt's own problem, counted over
the problem's other samples; where a failed sample's mistake is on a task with several
paths (tests/integration/test_gates.py measures the gates on the model)."""

from __future__ import annotations

import pytest

from core.tasks.chain import ANY_ORDER_CHAIN, ChainTask, make_problem, render, steps
from learner.gates import Gate, mistake_position, resample_rate
from methods.credit import divergence_position


def test_a_mistake_is_where_a_sample_leaves_every_valid_path_not_the_reference(tokenizer):
    task = ChainTask(world=ANY_ORDER_CHAIN)
    problem = make_problem(3, ["a", "c", "f"], ANY_ORDER_CHAIN)
    chain = steps(3, ["f", "a", "c"], ANY_ORDER_CHAIN.table)  # another order than the reference's
    wrong = (chain[1][2] + 1) % 10
    text = render([chain[0], (chain[1][0], chain[1][1], wrong)]).split(". ####")[0] + ", c"
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    response = encode(text)
    solutions = [encode(s) for s in task.solutions(problem)]
    assert len(set(task.solutions(problem))) == 6 and problem.reference in task.solutions(problem)
    at = mistake_position(response, solutions)
    assert tokenizer.decode(response[at:at + 1]) == str(wrong)  # the wrong value, step 2
    assert divergence_position(response, encode(problem.reference)) == 0  # the reference leaves at "f"
    table = ChainTask()
    assert table.solutions(make_problem(3, ["c", "a"])) == [make_problem(3, ["c", "a"]).reference]


def test_a_failed_sample_is_compared_with_its_problem_s_other_samples():
    # 8 samples, 3 right: each of the 5 failures sees 3 successes among the 7 others
    assert resample_rate([True, False, True, False, False, True, False, False]) == 3 / 7
    assert resample_rate([False] * 8) == 0.0
    assert resample_rate([False]) == 0.0  # no other sample: nothing to resample from


def test_a_gate_passes_on_its_side_of_the_threshold():
    assert Gate("G4", 0.0, 0.0, True, "").passed and not Gate("G4", -0.01, 0.0, True, "").passed
    assert Gate("G2", 0.3, 0.3, False, "").passed and not Gate("G2", 0.31, 0.3, False, "").passed
    assert Gate("G4", None, 0.0, True, "").passed is None


def test_g4_takes_the_larger_of_its_floor_and_half_the_bayes_gain_and_g4_loc_is_a_share(tiny_model_dir):
    import itertools

    from core.engines.hf import HFEngine
    from learner.curricula.bayes_reviser import RevisionBayes
    from learner.gates import G4_GAIN, _Scorer, failures, revision_gates

    task = ChainTask()
    engine = HFEngine.from_pretrained(str(tiny_model_dir))  # untrained: every sample fails
    f = failures(engine, list(itertools.islice(task.problems("test"), 2)), samples=2, task=task)
    scorer = _Scorer(engine.model, engine.tokenizer)
    bayes = RevisionBayes(fresh=0.3, posterior=0.7, map=0.8, localised=0.9, failure_rate=0.4)
    g4, loc = revision_gates(scorer, engine, f, task, bayes)
    assert g4.threshold == pytest.approx(0.2) and "0.700" in g4.what and "0.900" in loc.what
    assert revision_gates(scorer, engine, f, task, None)[0].threshold == G4_GAIN
    assert 0.0 <= loc.value <= 1.0 and loc.threshold == 0.6
