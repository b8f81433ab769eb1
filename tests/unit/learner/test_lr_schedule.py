"""The lr formula's shape at the points that pin it: warmup, the decays' middle and end."""

from __future__ import annotations

import math

import pytest

from learner.lr_schedule import lr_factor
from learner.srt_phase import warmup_cosine


def test_warmup_rises_linearly_to_the_peak_then_each_schedule_decays_its_own_way():
    assert [lr_factor(s, "constant", 4, 100) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    # after a warmup of 10 steps, 100 steps in all: the decay's middle is step 55
    assert lr_factor(55, "linear", 10, 100) == pytest.approx(0.5)
    assert lr_factor(55, "cosine", 10, 100) == pytest.approx(0.5)
    assert lr_factor(10 + 45 // 2, "cosine", 10, 100) > lr_factor(10 + 45 // 2, "linear", 10, 100)  # cosine holds longer
    assert lr_factor(100, "linear", 10, 100) == 0.0 and lr_factor(500, "cosine", 10, 100) == pytest.approx(0.0)
    assert lr_factor(0, "cosine", 0, 100) == 1.0  # no warmup: the peak at once


def test_an_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown lr schedule 'step'"):
        lr_factor(5, "step", 0, 10)


def test_the_srt_stages_warm_up_over_5_percent_then_follow_a_cosine():
    factor = warmup_cosine(200)
    assert [factor(s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factor(105) == pytest.approx(0.5 * (1 + math.cos(math.pi * 95 / 190)))
