"""Bounded staleness: the hard version bound and behaviour-policy importance weights.

At learner version v a group sampled at version v_b is ``v − v_b`` versions stale.
Groups with v − v_b > η, or from a version the learner does not have, are dropped outright
(:func:`drop_reason`). The rest are
corrected token by token with ρ_t = π_θold(y_t) / μ(y_t), where π_θold is the learner's
(detached) log-prob before the update and μ the engine's behaviour log-prob:

- ``token_truncate``: w_t = min(ρ_t, ρ̄)                                  (truncated IS)
- ``token_mask``:     w_t = ρ_t · 1[ρ_min ≤ ρ_t ≤ ρ̄]                       (masked IS)
- ``sequence_mask``:  w_t = ρ_geo · 1[ρ_min ≤ ρ_geo ≤ ρ̄] for every t of the sequence,
                      ρ_geo = exp(mean_t log ρ_t) (the length-normalised sequence ratio)
- ``none``:           w_t = 1

A full-distribution loss at a state (the top-k KL) is not a function of y_t: what needs
correcting is how often μ reaches the state s_t = (x, y_<t), so it takes the prefix ratio
(:func:`prefix_weights`), w_t = min(Π_{j<t} ρ_j, ρ̄) with w_0 = 1, or 1 under ``none``.

Reported: mean and max ρ, ESS = (Σw)²/Σw² with its fraction ESS/n, and the fraction of
tokens whose weight is 0.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

import torch

IS_MODES = ("token_truncate", "token_mask", "sequence_mask", "none")


class Drop(enum.StrEnum):
    """Why a group is not trained (the label of ``hsd_replay_dropped_total``)."""

    STALE = "stale"  # v − v_b > η
    FUTURE = "future"  # v_b > v: weights this learner never had (an earlier run's, before a resume)
    LOST = "lost"  # v_b in a range a crashed learner published past its last checkpoint


def drop_reason(current_version: int, policy_version: int, max_staleness: int,
                lost: Sequence[tuple[int, int]] = ()) -> Drop | None:
    """Why a group sampled at v_b cannot be trained at learner version v, or None when
    0 ≤ v − v_b ≤ η and v_b is in no ``lost`` range (inclusive [lo, hi] pairs). A version
    from the future cannot be corrected against: its π_θold is unknown."""
    if policy_version > current_version:
        return Drop.FUTURE
    if any(lo <= policy_version <= hi for lo, hi in lost):
        return Drop.LOST
    if current_version - policy_version > max_staleness:
        return Drop.STALE
    return None


def importance_weights(
    old_logprobs: torch.Tensor,
    behaviour_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token_truncate",
    rho_max: float = 2.0,
    rho_min: float = 0.5,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Behaviour-correction weights w [B, T] (0 on padding) and their statistics.

    old_logprobs, behaviour_logprobs [B, T]: log π_θold(y_t), log μ(y_t); mask [B, T].
    """
    if mode not in IS_MODES:
        raise ValueError(f"unknown importance-sampling mode {mode!r}")
    m = mask.to(torch.float32)
    log_rho = (old_logprobs.detach().float() - behaviour_logprobs.float()) * m
    rho = torch.exp(log_rho) * m
    if mode == "none":
        w = m.clone()
    elif mode == "token_truncate":
        w = rho.clamp(max=rho_max)
    elif mode == "token_mask":
        w = rho * ((rho >= rho_min) & (rho <= rho_max)).to(m.dtype)
    else:
        n = m.sum(-1).clamp(min=1)
        rho_geo = torch.exp(log_rho.sum(-1) / n)
        keep = ((rho_geo >= rho_min) & (rho_geo <= rho_max)).to(m.dtype)
        w = (rho_geo * keep).unsqueeze(-1) * m
    w = w * m
    return w, weight_statistics(rho, w, mask)


def prefix_weights(
    old_logprobs: torch.Tensor,
    behaviour_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token_truncate",
    rho_max: float = 2.0,
) -> torch.Tensor:
    """State-correction weights w [B, T] for a loss over the whole distribution at s_t.

    w_t = min(exp(Σ_{j<t} log ρ_j), ρ̄): the ratio π_θold(y_<t) / μ(y_<t) of reaching
    the prefix, truncated like ``token_truncate``; w_0 = 1 (the prompt is not sampled).
    Every mode but ``none`` (w_t = 1) takes it: the masks of ``token_mask`` and
    ``sequence_mask`` are decisions about a sampled token, which this loss has none of.
    Inputs as :func:`importance_weights`; 0 on padding.
    """
    if mode not in IS_MODES:
        raise ValueError(f"unknown importance-sampling mode {mode!r}")
    m = mask.to(torch.float32)
    if mode == "none":
        return m.clone()
    log_rho = (old_logprobs.detach().float() - behaviour_logprobs.float()) * m
    before = torch.cumsum(log_rho, dim=-1) - log_rho  # Σ_{j<t}
    # clamp in log space first: a long off-policy prefix would overflow exp
    return torch.exp(before.clamp(max=math.log(rho_max))) * m


def weight_statistics(rho: torch.Tensor, w: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """ρ's mean and max, the weights' effective sample size ESS = (Σw)²/Σw² and its share
    of the tokens, and the share of tokens weighted 0 — read from the device in one copy."""
    m = mask.bool()
    mf = m.to(w.dtype)
    n = mf.sum()
    w_v = w * mf
    sq = (w_v * w_v).sum()
    ess = torch.where(sq > 0, w_v.sum() ** 2 / sq.clamp(min=torch.finfo(sq.dtype).tiny), torch.zeros_like(sq))
    rho_max = torch.where(m, rho, torch.full_like(rho, float("-inf"))).max() if rho.numel() else n
    values = torch.stack([n, (rho * mf).sum() / n.clamp(min=1), rho_max.to(n.dtype), ess,
                          ((w == 0) & m).to(n.dtype).sum() / n.clamp(min=1)]).tolist()
    count, rho_mean, rho_max_v, ess_v, masked = values
    if count == 0:
        return {"rho_mean": 1.0, "rho_max": 1.0, "ess": 0.0, "ess_fraction": 1.0, "masked_fraction": 0.0}
    return {"rho_mean": rho_mean, "rho_max": rho_max_v, "ess": ess_v, "ess_fraction": ess_v / count,
            "masked_fraction": masked}
