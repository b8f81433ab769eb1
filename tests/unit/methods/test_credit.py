"""Hand-computed cases for methods.credit."""

from __future__ import annotations

import pytest
import torch

from methods.credit import (
    credit_profile,
    divergence_mass,
    divergence_position,
    peak_offset,
    silence_fraction,
    token_credit,
)

T = torch.tensor


def test_credit_is_teacher_minus_student_on_real_tokens():
    delta = token_credit(T([[-1.0, -0.5, -9.0]]), T([[-2.0, -0.5, -1.0]]), T([[True, True, False]]))
    assert delta.tolist() == [[1.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    ("y", "peer", "d"),
    [([1, 2, 3], [1, 2, 4], 2), ([1, 2, 3], [1, 2, 3], 3), ([], [1], 0), ([1, 2], [1, 2, 3], 2),
     ([5], [6], 0)],
)
def test_divergence_position_is_the_common_prefix_length(y, peer, d):
    assert divergence_position(y, peer) == d


def test_divergence_mass_window():
    delta = T([0.0, 0.0, 0.5, 2.0, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    # d = 3, w = 1: positions 2..4 hold 3.0 of 4.0
    assert divergence_mass(delta, 3, window=1) == pytest.approx(3.0 / 4.0)
    assert divergence_mass(delta, 3, window=0) == pytest.approx(2.0 / 4.0)
    assert divergence_mass(delta, 3, window=4) == pytest.approx(3.0 / 4.0)
    assert divergence_mass(delta, 10, window=0) == pytest.approx(1.0 / 4.0)
    assert divergence_mass(delta, 0, window=1) == pytest.approx(0.0)


def test_divergence_mass_undefined_for_empty_or_silent_credit():
    assert divergence_mass(T([]), 0) is None
    assert divergence_mass(torch.zeros(5), 2) is None


def test_peak_offset_takes_the_first_maximum_on_ties():
    assert peak_offset(T([1.0, -3.0, 3.0]), 0) == 1
    assert peak_offset(T([1.0, -3.0, 3.0]), 2) == -1
    assert peak_offset(T([]), 0) is None


def test_silence_fraction():
    assert silence_fraction(T([0.01, -0.04, 0.05, 1.0]), tau=0.05) == pytest.approx(0.5)
    assert silence_fraction(T([1.0]), tau=0.05) == 0.0
    assert silence_fraction(T([]), tau=0.05) is None


def test_profile_with_and_without_a_peer():
    delta = T([0.0, 0.1, -2.0, 0.3])
    hsd = credit_profile(delta, [1, 2, 3, 4], [1, 2, 9], window=1, tau=0.05, top=2)
    assert hsd.divergence == 2
    assert hsd.peak_offset == 0
    assert hsd.divergence_mass == pytest.approx(2.4 / 2.4)
    assert hsd.top_positions == [2, 3]
    assert hsd.abs_mean == pytest.approx(2.4 / 4)
    opsd = credit_profile(delta, [1, 2, 3, 4], None)
    assert opsd.divergence is None and opsd.divergence_mass is None and opsd.peak_offset is None
    assert opsd.silence == pytest.approx(0.25)
    empty = credit_profile(T([]), [], [1])
    assert (empty.length, empty.abs_mean, empty.peak_offset, empty.top_positions) == (0, None, None, [])
