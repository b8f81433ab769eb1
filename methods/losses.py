"""Losses: pure functions on tensors returning ``(loss, metrics)``.

Shapes: B sequences, T response positions (right-padded); ``mask`` [B, T] is True on real
response tokens. Log-probs are natural-log, float32.

Normalisation (``aggregate``), with ℓ_{i,t} the per-token loss and n_i = Σ_t mask_{i,t}:

- ``token_mean``      Σ_{i,t} ℓ_{i,t} / N_tok        (DAPO; N_tok: tokens in the global batch)
- ``sequence_mean``   (1/N_seq) Σ_i (1/n_i) Σ_t ℓ_{i,t}  (GRPO)
- ``constant_length`` Σ_{i,t} ℓ_{i,t} / (N_seq · L)  (Dr. GRPO; L a fixed length)

``N_tok`` and ``N_seq`` default to this call's counts; with gradient accumulation the
caller passes the global batch's counts so that micro-batches add up to one mean.
"""

from __future__ import annotations

import torch

NORMALIZATIONS = ("token_mean", "sequence_mean", "constant_length")


def _floats(**scalars: torch.Tensor) -> dict[str, float]:
    """Scalar tensors as floats, read from the device in one copy (one synchronisation)."""
    values = torch.stack([t.detach().float() for t in scalars.values()]).tolist()
    return dict(zip(scalars, values, strict=True))


def group_advantages(rewards: torch.Tensor, mode: str = "grpo", eps: float = 1e-6) -> torch.Tensor:
    """Outcome advantage of each sample of one group.

    ``grpo``:    A_i = (r_i − mean r) / (std r + ε)
    ``dr_grpo``: A_i =  r_i − mean r
    ``none``:    A_i = 0
    std is the population std (a group of one, or of equal rewards, gets A = 0, not NaN).
    rewards [G] -> [G].
    """
    rewards = rewards.float()
    if mode == "none":
        return torch.zeros_like(rewards)
    centred = rewards - rewards.mean()
    if mode == "dr_grpo":
        return centred
    if mode == "grpo":
        return centred / (rewards.std(unbiased=False) + eps)
    raise ValueError(f"unknown advantage mode {mode!r}")


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token_mean",
    *,
    num_tokens: float | None = None,
    num_sequences: float | None = None,
    constant_length: int | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss [B, T] to a scalar with the module's normalisation modes."""
    m = mask.to(per_token.dtype)
    masked = per_token * m
    if mode == "token_mean":
        denom = m.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=m.dtype)
        return masked.sum() / denom.clamp(min=1)
    n_seq = per_token.shape[0] if num_sequences is None else num_sequences
    if mode == "sequence_mean":
        per_seq = masked.sum(-1) / m.sum(-1).clamp(min=1)
        return per_seq.sum() / max(n_seq, 1)
    if mode == "constant_length":
        length = constant_length if constant_length is not None else per_token.shape[-1]
        return masked.sum() / (max(n_seq, 1) * max(length, 1))
    raise ValueError(f"unknown normalisation {mode!r}")


def combined_advantages(
    outcome: torch.Tensor, credit: torch.Tensor, credit_mask: torch.Tensor, credit_coef: float
) -> torch.Tensor:
    """A_{i,t} = A_i + λ·sg(δ_{i,t}).

    outcome [B] (A_i), credit [B, T] (δ), credit_mask [B, T] (False where a sample has no
    teacher: its tokens get the outcome term only) -> [B, T].
    """
    dense = credit.detach() * credit_mask.to(credit.dtype)
    return outcome.unsqueeze(-1).to(credit.dtype) + credit_coef * dense


def reference_kl_advantage(
    old_logprobs: torch.Tensor, reference_logprobs: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """The KL penalty to the initial weights θ0 as a per-token advantage term.

    −β·(log π_θold(y_t) − log π_θ0(y_t)): the sampled (k1) estimate of the reverse
    KL(π_θ ‖ π_θ0) on the sampled token, as a reward. It has the form of a frozen teacher's
    credit δ_t = log π_θ0(y_t | c) − log π_θ(y_t | x) without the context c, which is what
    the ablation of HSD's frozen teacher needs. All [B, T] -> [B, T] (0 on padding).
    """
    return -beta * (old_logprobs.detach() - reference_logprobs.detach()) * mask.to(old_logprobs.dtype)


def policy_gradient_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    is_weights: torch.Tensor | None = None,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    normalization: str = "token_mean",
    **norm_kwargs,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Staleness-corrected, clipped policy gradient (the ``sampled`` distillation loss).

    r_t = exp(log π_θ(y_t) − log π_θold(y_t)),
    ℓ_t = −w_t · min(r_t·A_t, clip(r_t, 1−ε_low, 1+ε_high)·A_t),
    where w_t are the behaviour importance weights (π_θold/μ, see
    :mod:`learner.staleness`) and A_t the (detached) advantages. In the first epoch
    π_θ = π_θold, so r_t = 1 and ∇L = −Σ w_t·A_t·∇log π_θ(y_t): the plain
    L = −Σ_t w_t · sg(A_t) · log π_θ(y_t). The clip is the decoupled PPO clip that keeps
    later epochs near π_θold. All inputs [B, T]; returns (scalar loss, metrics).
    """
    adv = advantages.detach()
    ratio = torch.exp(logprobs - old_logprobs.detach())
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    surrogate = torch.minimum(ratio * adv, clipped * adv)
    weights = torch.ones_like(logprobs) if is_weights is None else is_weights.detach()
    per_token = -weights * surrogate
    loss = aggregate(per_token, mask, normalization, **norm_kwargs)
    m = mask.to(ratio.dtype)
    n = m.sum().clamp(min=1)
    clipped_frac = (((ratio - clipped).abs() > 0).to(m.dtype) * m).sum() / n
    return loss, _floats(loss=loss, clip_fraction=clipped_frac, advantage_mean=(adv * m).sum() / n)


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(P‖Q) = Σ_v P_v (log P_v − log Q_v) over the last dim, P = softmax(p_logits),
    Q = softmax(q_logits), in float32: [..., V] -> [...]."""
    log_p = torch.log_softmax(p_logits.float(), dim=-1)
    log_q = torch.log_softmax(q_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def topk_distillation_loss(
    student_topk_logits: torch.Tensor,
    teacher_topk_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    alpha: float = 0.5,
    is_weights: torch.Tensor | None = None,
    normalization: str = "token_mean",
    **norm_kwargs,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mixed KL over the teacher's top-k tokens at each response position.

    With K_t the teacher's k most likely tokens at t, both distributions renormalised over
    K_t: T̃ = softmax(z^T[K_t]), S̃ = softmax(z^S[K_t]), and
    ℓ_t = w_t·(α·KL(T̃‖S̃) + (1−α)·KL(S̃‖T̃)); α = 1 forward KL, α = 0 reverse KL.
    w_t corrects the state s_t, not a sampled token: the prefix ratio of
    :func:`learner.staleness.prefix_weights`.
    Both arguments hold logits at the same tokens K_t, [B, T, k] (the student's gathered at
    the teacher's top-k indices; the renormalisation makes everything outside K_t
    irrelevant, so vocabulary-wide logits are never needed). The teacher is detached.
    mask [B, T] -> (scalar loss, metrics).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    forward = kl_divergence(teacher_topk_logits.detach(), student_topk_logits)
    reverse = kl_divergence(student_topk_logits, teacher_topk_logits.detach())
    per_token = alpha * forward + (1.0 - alpha) * reverse
    if is_weights is not None:
        per_token = per_token * is_weights.detach()
    loss = aggregate(per_token, mask, normalization, **norm_kwargs)
    m = mask.to(per_token.dtype)
    n = m.sum().clamp(min=1)
    return loss, _floats(loss=loss, teacher_kl=(forward * m).sum() / n, reverse_kl=(reverse * m).sum() / n)


def supervised_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    normalization: str = "token_mean",
    **norm_kwargs,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Completion-only negative log-likelihood (method ``srt``): ℓ_t = −log π_θ(y_t)."""
    loss = aggregate(-logprobs, mask, normalization, **norm_kwargs)
    return loss, {"loss": float(loss.detach())}
