"""Hand-computed cases for learner.staleness."""

from __future__ import annotations

import math

import pytest
import torch

from learner.staleness import Drop, drop_reason, importance_weights, prefix_weights

T = torch.tensor


def _logs(rhos, mu=-1.0):
    """old log-probs whose ratio to a behaviour log-prob `mu` is each rho."""
    return T([[mu + math.log(r) for r in row] for row in rhos]), torch.full((len(rhos), len(rhos[0])), mu)


def test_drop_reason_bounds_staleness_and_refuses_future_and_lost_versions():
    reasons = [drop_reason(10, v, 2) for v in (10, 9, 8, 7, 11)]
    assert reasons == [None, None, None, Drop.STALE, Drop.FUTURE]
    assert [drop_reason(10, v, 0) for v in (10, 9)] == [None, Drop.STALE]
    # a resume from version 5 after a crash that had published up to 8: 6..8 are lost,
    # and after the learner jumps to 9 they stay lost although within η of it
    lost = [(6, 8)]
    assert [drop_reason(9, v, 4, lost) for v in (5, 6, 8, 9)] == [None, Drop.LOST, Drop.LOST, None]


def test_token_truncate():
    old, mu = _logs([[0.25, 1.0, 3.0]])
    w, stats = importance_weights(old, mu, T([[True, True, True]]), "token_truncate", rho_max=2.0)
    assert torch.allclose(w, T([[0.25, 1.0, 2.0]]), atol=1e-6)
    assert stats["rho_mean"] == pytest.approx((0.25 + 1 + 3) / 3, rel=1e-5)
    assert stats["rho_max"] == pytest.approx(3.0, rel=1e-5)
    assert stats["ess"] == pytest.approx(3.25**2 / (0.0625 + 1 + 4), rel=1e-5)
    assert stats["ess_fraction"] == pytest.approx(stats["ess"] / 3)
    assert stats["masked_fraction"] == 0.0


def test_token_mask_zeroes_outside_the_band():
    old, mu = _logs([[0.25, 1.0, 3.0, 1.5]])
    w, stats = importance_weights(old, mu, T([[True, True, True, True]]), "token_mask", 2.0, 0.5)
    assert torch.allclose(w, T([[0.0, 1.0, 0.0, 1.5]]), atol=1e-6)
    assert stats["masked_fraction"] == pytest.approx(0.5)


def test_sequence_mask_uses_the_geometric_mean_ratio():
    old, mu = _logs([[0.25, 1.0, 3.0], [4.0, 4.0, 1.0]])
    mask = T([[True, True, True], [True, True, False]])  # second: geo mean of (4, 4) = 4
    w, stats = importance_weights(old, mu, mask, "sequence_mask", 2.0, 0.5)
    geo = 0.75 ** (1 / 3)
    assert torch.allclose(w, T([[geo, geo, geo], [0.0, 0.0, 0.0]]), atol=1e-6)
    assert stats["masked_fraction"] == pytest.approx(2 / 5)


def test_padding_never_gets_weight_and_none_mode_is_ones():
    old, mu = _logs([[5.0, 5.0]])
    w, _ = importance_weights(old, mu, T([[True, False]]), "none")
    assert w.tolist() == [[1.0, 0.0]]
    w, _ = importance_weights(old, mu, T([[True, False]]), "token_truncate")
    assert w.tolist() == [[2.0, 0.0]]


def test_on_policy_weights_are_one_with_full_ess():
    old = torch.randn(3, 4)
    w, stats = importance_weights(old, old.clone(), torch.ones(3, 4, dtype=torch.bool))
    assert torch.allclose(w, torch.ones(3, 4))
    assert stats["ess_fraction"] == pytest.approx(1.0)


def test_empty_mask_and_unknown_mode():
    _, stats = importance_weights(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.bool))
    assert stats["masked_fraction"] == 0.0
    with pytest.raises(ValueError):
        importance_weights(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), "clip")


def test_prefix_weights_are_the_truncated_ratio_of_reaching_each_state():
    old, mu = _logs([[0.5, 0.5, 3.0, 2.0], [1.5, 1.5, 1.0, 9.0]])
    mask = T([[True, True, True, True], [True, True, True, False]])
    w = prefix_weights(old, mu, mask, "token_truncate", rho_max=2.0)
    # row 0: 1, ρ_0, ρ_0ρ_1, ρ_0ρ_1ρ_2 = 1, .5, .25, .75; row 1: 1, 1.5, 2.25 → 2, padding 0
    assert torch.allclose(w, T([[1.0, 0.5, 0.25, 0.75], [1.0, 1.5, 2.0, 0.0]]), atol=1e-6)
    # the masks of token_mask / sequence_mask are about sampled tokens: the state ratio is the same
    for mode in ("token_mask", "sequence_mask"):
        assert torch.allclose(prefix_weights(old, mu, mask, mode, rho_max=2.0), w, atol=1e-6)
    assert prefix_weights(old, mu, mask, "none").tolist() == mask.float().tolist()


def test_prefix_weights_survive_a_long_off_policy_prefix():
    old = torch.zeros(1, 400)
    mu = torch.full((1, 400), -5.0)  # ρ = e⁵ a token: the raw product overflows float32
    w = prefix_weights(old, mu, torch.ones(1, 400, dtype=torch.bool), rho_max=2.0)
    assert torch.isfinite(w).all() and w[0, 0] == 1.0 and torch.allclose(w[0, 1:], torch.full((399,), 2.0))
    with pytest.raises(ValueError):
        prefix_weights(old, mu, torch.ones(1, 400), "clip")
