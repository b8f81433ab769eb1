"""SD-Zero's phase 1 in the reference's order (learner/srt_phase.py): the stage split and
the schedule (tests/integration/test_srt_phase.py: a collection and training)."""

from __future__ import annotations

import pytest

from learner.srt_phase import RevisionTuple, split_stages, warmup_cosine


def _tuples(wrong: int, right: int) -> list[RevisionTuple]:
    return ([RevisionTuple(f"w{i}", (1, i), False, (2,)) for i in range(wrong)]
            + [RevisionTuple(f"r{i}", (1, i), True, (2,)) for i in range(right)])


def test_stage_two_takes_its_quota_right_attempts_first_and_stage_one_the_remaining_wrong_ones():
    stage1, stage2 = split_stages(_tuples(wrong=30, right=4), stage2_size=10)
    assert len(stage2) == 10 and sum(r.attempt_success for r in stage2) == 4
    assert len(stage1) == 24 and not any(r.attempt_success for r in stage1)
    assert not set(stage1) & set(stage2)  # disjoint
    stage1, stage2 = split_stages(_tuples(wrong=30, right=15), stage2_size=10)
    assert all(r.attempt_success for r in stage2) and len(stage1) == 30  # 5 right-attempt tuples unused
    with pytest.raises(ValueError, match="empty SRT stage"):
        split_stages(_tuples(wrong=5, right=0), stage2_size=10)


def test_the_schedule_warms_up_linearly_then_decays_by_a_cosine_to_zero():
    factor = warmup_cosine(100, warmup_ratio=0.05)
    assert [factor(s) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    after = [factor(s) for s in range(4, 100)]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False)) and after[-1] < 0.01
    assert factor(52) == pytest.approx(0.5, abs=0.02)  # halfway through the decay
