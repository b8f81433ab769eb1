"""The batch's outcome signal the learner exports (truncated responses, groups whose
rewards are all equal), and the bounded credit log."""

from __future__ import annotations

import dataclasses

import pytest

from learner.replay import TaggedGroup
from learner.service import outcome_signal, rotate_when_full
from tests.unit.core.records_factory import make_group, make_sample


def _group(rewards: list[float], truncated: int = 0) -> TaggedGroup:
    samples = tuple(dataclasses.replace(make_sample(seed=i), reward=r, success=r == 1.0,
                                        finish="length" if i < truncated else "stop")
                    for i, r in enumerate(rewards))
    return TaggedGroup(b"0-1", make_group(samples=samples), [])


def test_zero_std_groups_and_truncated_responses_are_counted_per_batch():
    batch = [_group([1.0, 1.0, 1.0, 1.0]), _group([0.0, 0.0, 0.0, 0.0], truncated=3), _group([0.0, 1.0, 0.5, 1.0]),
             _group([0.25, 0.25, 0.25, 0.25], truncated=1)]
    signal = outcome_signal(batch)
    assert signal["zero_std_fraction"] == pytest.approx(3 / 4)  # all right, all wrong, all equal
    assert signal["truncated_fraction"] == pytest.approx(4 / 16)


def test_a_full_log_is_rotated_to_one_previous_file(tmp_path):
    log = tmp_path / "credit.jsonl"
    rotate_when_full(log, 10)  # nothing yet: nothing to do
    log.write_text("a" * 9)
    rotate_when_full(log, 10)
    assert log.read_text() == "a" * 9 and not (tmp_path / "credit.jsonl.1").exists()
    log.write_text("b" * 10)
    rotate_when_full(log, 10)
    assert not log.exists() and (tmp_path / "credit.jsonl.1").read_text() == "b" * 10
    log.write_text("c" * 12)
    rotate_when_full(log, 10)
    assert (tmp_path / "credit.jsonl.1").read_text() == "c" * 12  # the one before is dropped: two files at most
