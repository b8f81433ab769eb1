"""The batch's outcome signal the learner exports: truncated responses and groups whose
rewards are all equal (no group-relative advantage)."""

from __future__ import annotations

import dataclasses

import pytest

from learner.replay import TaggedGroup
from learner.service import outcome_signal
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
