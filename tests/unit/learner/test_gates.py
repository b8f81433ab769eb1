"""G4's bar: the student's success rate on the failed attempt's own problem, counted over
the problem's other samples (tests/integration/test_gates.py measures the gates on the model)."""

from __future__ import annotations

from learner.gates import Gate, resample_rate


def test_a_failed_sample_is_compared_with_its_problem_s_other_samples():
    # 8 samples, 3 right: each of the 5 failures sees 3 successes among the 7 others
    assert resample_rate([True, False, True, False, False, True, False, False]) == 3 / 7
    assert resample_rate([False] * 8) == 0.0
    assert resample_rate([False]) == 0.0  # no other sample: nothing to resample from


def test_a_gate_passes_on_its_side_of_the_threshold():
    assert Gate("G4", 0.0, 0.0, True, "").passed and not Gate("G4", -0.01, 0.0, True, "").passed
    assert Gate("G2", 0.3, 0.3, False, "").passed and not Gate("G2", 0.31, 0.3, False, "").passed
    assert Gate("G4", None, 0.0, True, "").passed is None
