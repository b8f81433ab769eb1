"""Which successful peer each sample of a group is distilled from, or why none (HSD).

Pure logic: the replay buffer tags each group with it (and keeps the peer bank); a
method's teacher view reads the tags through :func:`resolve_peer`. A peer is a successful sample
of the *same* group and never the sample itself: it is then an exact draw from
π(y | x, R=1), so HSD needs no extra rollouts.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.records import RolloutGroup


class PeerSource(enum.StrEnum):
    GROUP = "group"  # a successful peer from the same group
    BANK = "bank"  # a successful rollout of the same prompt from an earlier group
    ANSWER = "answer"  # no peer: the teacher sees the reference answer (OPSD-style)
    NONE = "none"  # no peer: distillation is masked, the GRPO term alone trains it


class NoPeer(enum.StrEnum):
    """Why a sample has no in-group peer."""

    NO_SUCCESS = "no_success"  # nobody in the group succeeded
    ONLY_SELF = "only_self"  # the sample is the group's only success
    NO_ANSWER = "no_answer"  # fallback `answer`, but the task has no reference answer
    BANK_EMPTY = "bank_empty"  # fallback `bank`, but no earlier success is banked


@dataclass(frozen=True)
class BankedPeer:
    """A successful rollout kept for its prompt by the replay buffer's peer bank."""

    ids: np.ndarray  # int32 response token ids
    text: str  # decoded response
    group_id: str  # the group it came from
    policy_version: int  # the version that generated it (for the staleness bound)


@dataclass(frozen=True)
class PeerTag:
    """Where sample i's teacher context comes from."""

    source: PeerSource
    index: int | None = None  # peer's index in the group when source is GROUP
    bank: BankedPeer | None = None  # the banked peer when source is BANK
    reason: NoPeer | None = None  # why there is no in-group peer (None when source is GROUP)

    @property
    def distills(self) -> bool:
        return self.source is not PeerSource.NONE


def assign_peers(
    success: Sequence[bool],
    lengths: Sequence[int],
    *,
    strategy: str = "random",
    fallback: str = "answer",
    has_answer: bool = False,
    bank: BankedPeer | None = None,
    rng: random.Random | None = None,
) -> list[PeerTag]:
    """One :class:`PeerTag` per sample.

    strategy ``random``: a uniformly drawn successful peer; ``shortest``: the shortest
    successful peer (ties: lowest index). ``fallback`` for samples without a peer:
    ``answer`` | ``none`` | ``bank``.
    """
    if len(success) != len(lengths):
        raise ValueError(f"{len(success)} success flags but {len(lengths)} lengths")
    if strategy not in ("random", "shortest"):
        raise ValueError(f"unknown peer strategy {strategy!r}")
    if fallback not in ("answer", "none", "bank"):
        raise ValueError(f"unknown peer fallback {fallback!r}")
    rng = rng or random.Random(0)
    winners = [i for i, ok in enumerate(success) if ok]
    tags = []
    for i in range(len(success)):
        candidates = [j for j in winners if j != i]
        if candidates:
            if strategy == "shortest":
                j = min(candidates, key=lambda k: (lengths[k], k))
            else:
                j = rng.choice(candidates)
            tags.append(PeerTag(PeerSource.GROUP, index=j))
            continue
        reason = NoPeer.ONLY_SELF if winners else NoPeer.NO_SUCCESS
        tags.append(_fallback(fallback, reason, has_answer, bank))
    return tags


def _fallback(fallback: str, reason: NoPeer, has_answer: bool, bank: BankedPeer | None) -> PeerTag:
    if fallback == "answer":
        if has_answer:
            return PeerTag(PeerSource.ANSWER, reason=reason)
        return PeerTag(PeerSource.NONE, reason=NoPeer.NO_ANSWER)
    if fallback == "bank":
        if bank is not None:
            return PeerTag(PeerSource.BANK, bank=bank, reason=reason)
        return PeerTag(PeerSource.NONE, reason=NoPeer.BANK_EMPTY)
    return PeerTag(PeerSource.NONE, reason=reason)


@dataclass(frozen=True)
class ResolvedPeer:
    """The successful peer a sample's credit is measured against."""

    text: str  # decoded response (what HSD's teacher reads)
    ids: list[int]  # token ids (the divergence is measured on these)
    ref: str  # "group_id/index", or "group_id/bank", for the credit log


def resolve_peer(group: RolloutGroup, tag: PeerTag) -> ResolvedPeer | None:
    """The peer ``tag`` names in ``group`` (or in the bank), or None."""
    if tag.source is PeerSource.GROUP and tag.index is not None:
        peer = group.samples[tag.index]
        return ResolvedPeer(peer.text, peer.ids.tolist(), f"{group.group_id}/{tag.index}")
    if tag.source is PeerSource.BANK and tag.bank is not None:
        return ResolvedPeer(tag.bank.text, tag.bank.ids.tolist(), f"{tag.bank.group_id}/bank")
    return None
