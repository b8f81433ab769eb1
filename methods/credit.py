"""Per-token credit δ_t and the statistics users watch.

δ_t = log π_T(y_t | c, y_<t) − log π_θ(y_t | x, y_<t)

For HSD, with y⁺ the peer: the divergence position d is the length of the longest
common token prefix of y and y⁺ (the first index where they differ), and

- divergence mass  = Σ_{|t−d| ≤ w} |δ_t| / Σ_t |δ_t|      (w = 4 by default)
- peak offset      = argmax_t |δ_t| − d                    (first maximum on ties)
- silence          = fraction of positions with |δ_t| < τ

SD-Zero and OPSD have no d: their profile is |δ| mean, silence and the top positions.
Undefined values (empty responses, all-zero credit, no peer) are ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch


def token_credit(
    teacher_logprobs: torch.Tensor, student_logprobs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """δ [B, T] = (log π_T − log π_θ) on real tokens, 0 on padding; both inputs detached."""
    delta = teacher_logprobs.detach().float() - student_logprobs.detach().float()
    return delta * mask.to(delta.dtype)


def divergence_position(response: Sequence[int], peer: Sequence[int]) -> int:
    """Length of the longest common token prefix of y and y⁺."""
    d = 0
    for a, b in zip(response, peer, strict=False):
        if a != b:
            break
        d += 1
    return d


def divergence_mass(delta: torch.Tensor, d: int, window: int = 4) -> float | None:
    """Share of Σ|δ| within ``window`` positions of d; None for empty or all-zero δ."""
    a = delta.detach().abs().float()
    total = float(a.sum())
    if a.numel() == 0 or total == 0.0:
        return None
    lo, hi = max(0, d - window), min(a.numel(), d + window + 1)
    return float(a[lo:hi].sum()) / total if lo < hi else 0.0


def peak_offset(delta: torch.Tensor, d: int) -> int | None:
    """argmax_t |δ_t| − d (first maximum); None for an empty response."""
    if delta.numel() == 0:
        return None
    return int(torch.argmax(delta.detach().abs())) - d


def silence_fraction(delta: torch.Tensor, tau: float = 0.05) -> float | None:
    """Fraction of positions with |δ_t| < τ; None for an empty response."""
    if delta.numel() == 0:
        return None
    return float((delta.detach().abs() < tau).float().mean())


@dataclass(frozen=True)
class CreditProfile:
    """The credit statistics of one distilled sample."""

    length: int
    abs_mean: float | None
    silence: float | None
    top_positions: list[int]
    divergence: int | None = None
    divergence_mass: float | None = None
    peak_offset: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def credit_profile(
    delta: torch.Tensor,
    response: Sequence[int],
    peer: Sequence[int] | None = None,
    *,
    window: int = 4,
    tau: float = 0.05,
    top: int = 3,
) -> CreditProfile:
    """Profile of one sample's unpadded δ [n]; the divergence terms need the peer's ids."""
    delta = delta.detach().float()
    n = delta.numel()
    abs_mean = float(delta.abs().mean()) if n else None
    tops = torch.argsort(delta.abs(), descending=True, stable=True)[: min(top, n)].tolist()
    if peer is None:
        return CreditProfile(n, abs_mean, silence_fraction(delta, tau), tops)
    d = divergence_position(response, peer)
    return CreditProfile(
        n,
        abs_mean,
        silence_fraction(delta, tau),
        tops,
        divergence=d,
        divergence_mass=divergence_mass(delta, d, window),
        peak_offset=peak_offset(delta, d),
    )
