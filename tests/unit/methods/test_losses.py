"""Hand-computed cases for every loss formula in methods.losses."""

from __future__ import annotations

import math

import pytest
import torch

from methods.losses import (
    aggregate,
    combined_advantages,
    group_advantages,
    kl_divergence,
    policy_gradient_loss,
    supervised_loss,
    topk_distillation_loss,
)

T = torch.tensor


def test_grpo_advantage_standardises_by_population_std():
    adv = group_advantages(T([1.0, 0.0, 0.0, 1.0]), "grpo", eps=0.0)
    assert torch.allclose(adv, T([1.0, -1.0, -1.0, 1.0]))
    adv = group_advantages(T([1.0, 0.0, 0.0, 0.0]), "grpo", eps=0.0)
    # mean .25, std sqrt(.1875)
    s = math.sqrt(0.1875)
    assert torch.allclose(adv, T([0.75 / s, -0.25 / s, -0.25 / s, -0.25 / s]))


def test_dr_grpo_advantage_only_centres():
    assert torch.allclose(group_advantages(T([1.0, 0.0, 0.0, 1.0]), "dr_grpo"), T([0.5, -0.5, -0.5, 0.5]))


@pytest.mark.parametrize("rewards", [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.3, 0.3], [1.0]])
@pytest.mark.parametrize("mode", ["grpo", "dr_grpo", "none"])
def test_all_fail_all_success_zero_variance_and_singleton_groups_get_zero(rewards, mode):
    adv = group_advantages(T(rewards), mode)
    assert torch.isfinite(adv).all()
    assert torch.equal(adv, torch.zeros(len(rewards)))


def test_unknown_modes_are_errors():
    with pytest.raises(ValueError):
        group_advantages(T([1.0]), "ppo")
    with pytest.raises(ValueError):
        aggregate(torch.ones(1, 1), torch.ones(1, 1), "median")


PER_TOKEN = T([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0]])
MASK = T([[True, True, True], [True, False, False]])


def test_token_mean_over_the_batch():
    assert aggregate(PER_TOKEN, MASK, "token_mean").item() == pytest.approx(10 / 4)
    # global-batch denominator for gradient accumulation
    assert aggregate(PER_TOKEN, MASK, "token_mean", num_tokens=8).item() == pytest.approx(10 / 8)


def test_sequence_mean_weights_sequences_equally():
    assert aggregate(PER_TOKEN, MASK, "sequence_mean").item() == pytest.approx((6 / 3 + 4 / 1) / 2)
    assert aggregate(PER_TOKEN, MASK, "sequence_mean", num_sequences=4).item() == pytest.approx(6 / 4)


def test_constant_length_divides_by_a_fixed_length():
    got = aggregate(PER_TOKEN, MASK, "constant_length", constant_length=5)
    assert got.item() == pytest.approx(10 / (2 * 5))


@pytest.mark.parametrize("mode", ["token_mean", "sequence_mean", "constant_length"])
def test_empty_masks_reduce_to_zero_not_nan(mode):
    got = aggregate(torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.bool), mode)
    assert got.item() == 0.0


def test_combined_advantage_adds_lambda_times_masked_credit():
    got = combined_advantages(T([1.0, -1.0]), T([[0.5, -0.5], [1.0, 2.0]]),
                              T([[True, True], [True, False]]), credit_coef=0.1)
    assert torch.allclose(got, T([[1.05, 0.95], [-0.9, -1.0]]))


def test_combined_advantage_does_not_backprop_into_the_credit():
    credit = T([[0.5]], requires_grad=True)
    assert not combined_advantages(T([0.0]), credit, T([[True]]), 1.0).requires_grad


def test_policy_gradient_first_epoch_is_weighted_reinforce():
    logp = T([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    adv = T([[2.0, -1.0], [0.5, 9.0]])
    w = T([[1.0, 0.5], [2.0, 1.0]])
    mask = T([[True, True], [True, False]])
    loss, metrics = policy_gradient_loss(logp, logp.detach(), adv, mask, w)
    # -Σ w·A / N_tok = -(2 - 0.5 + 1) / 3
    assert loss.item() == pytest.approx(-(2.0 - 0.5 + 1.0) / 3)
    loss.backward()
    assert torch.allclose(logp.grad, T([[-2.0, 0.5], [-1.0, 0.0]]) / 3)
    assert metrics["clip_fraction"] == 0.0


@pytest.mark.parametrize(
    ("ratio", "adv", "has_grad"),
    [(1.5, 1.0, False), (1.5, -1.0, True), (0.5, 1.0, True), (0.5, -1.0, False), (1.1, 1.0, True)],
)
def test_decoupled_ppo_clip(ratio, adv, has_grad):
    old = T([[math.log(0.4)]])
    logp = T([[math.log(0.4 * ratio)]], requires_grad=True)
    loss, _ = policy_gradient_loss(logp, old, T([[adv]]), T([[True]]), clip_low=0.2, clip_high=0.28)
    expected = -min(ratio * adv, min(max(ratio, 0.8), 1.28) * adv)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert (logp.grad.abs().item() > 0) == has_grad


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def _softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


@pytest.mark.parametrize("alpha", [1.0, 0.0, 0.5, 0.25])
def test_topk_mixed_kl_by_hand(alpha):
    teacher = T([[[2.0, 1.0]]])  # the teacher's top-2 logits; the student's at the same two tokens
    student = T([[[0.0, 1.0]]], requires_grad=True)
    loss, metrics = topk_distillation_loss(student, teacher, T([[True]]), alpha=alpha)
    t, s = _softmax([2.0, 1.0]), _softmax([0.0, 1.0])  # renormalised over the teacher's top-2
    expected = alpha * _kl(t, s) + (1 - alpha) * _kl(s, t)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics["teacher_kl"] == pytest.approx(_kl(t, s), rel=1e-5)


def test_topk_full_vocabulary_and_identical_distributions():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert topk_distillation_loss(logits, logits, mask)[0].item() == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(2, 4, 7)
    full = torch.nn.functional.kl_div(
        other.log_softmax(-1), logits.log_softmax(-1), log_target=True, reduction="none").sum(-1).mean()
    got = topk_distillation_loss(other, logits, mask, alpha=1.0)[0]
    assert got.item() == pytest.approx(full.item(), rel=1e-5)


def test_topk_teacher_gets_no_gradient_and_weights_apply():
    teacher = torch.randn(1, 2, 5, requires_grad=True)
    student = torch.randn(1, 2, 5, requires_grad=True)
    mask = T([[True, True]])
    loss, _ = topk_distillation_loss(student, teacher, mask, is_weights=T([[0.0, 1.0]]))
    loss.backward()
    assert teacher.grad is None
    assert student.grad[0, 0].abs().sum().item() == 0.0  # weight 0 position
    assert student.grad[0, 1].abs().sum().item() > 0.0


def test_topk_rejects_bad_alpha():
    with pytest.raises(ValueError):
        topk_distillation_loss(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), T([[True]]), alpha=1.5)


def test_supervised_loss_is_masked_nll():
    logp = T([[-1.0, -3.0], [-2.0, -50.0]])
    loss, _ = supervised_loss(logp, T([[True, True], [True, False]]))
    assert loss.item() == pytest.approx(2.0)


def test_kl_divergence_of_two_distributions_by_hand():
    p, q = T([[0.5, 0.5]]).log(), T([[0.9, 0.1]]).log()
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert math.isclose(float(kl_divergence(p, q)), expected, rel_tol=1e-5)
    assert math.isclose(float(kl_divergence(p + 3.0, q)), expected, rel_tol=1e-5)  # logits, not log-probs
    assert float(kl_divergence(q, q)) == pytest.approx(0.0, abs=1e-7)
