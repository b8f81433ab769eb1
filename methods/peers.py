"""Which successful peer each sample of a group is distilled from, or why none (HSD).

Pure logic: the replay buffer tags each group with it (and keeps the peer bank); a
method's teacher view reads the tags through :func:`resolve_peer`. A peer is a successful sample
of the *same* group and never the sample itself: it is then an exact draw from
π(y | x, R=1), so HSD needs no extra rollouts.

The ablations of ``algorithm.peer_source`` replace that peer on the learner, batch by batch
(:func:`substitute_peers`), on exactly the samples that had one: ``placebo`` puts a success
of another prompt of the batch in its place (does the peer's *content* matter, or only a
fluent solution in context?), ``reference`` the task's reference solution (an on-policy
peer against the ground truth).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.records import RolloutGroup


class PeerSource(enum.StrEnum):
    GROUP = "group"  # a successful peer from the same group
    BANK = "bank"  # a successful rollout of the same prompt from an earlier group
    PLACEBO = "placebo"  # ablation: a successful rollout of another prompt of the batch
    REFERENCE = "reference"  # ablation: the task's reference solution
    ANSWER = "answer"  # no peer: the teacher sees the reference answer (OPSD-style)
    NONE = "none"  # no peer: distillation is masked, the GRPO term alone trains it


class NoPeer(enum.StrEnum):
    """Why a sample has no in-group peer."""

    NO_SUCCESS = "no_success"  # nobody in the group succeeded
    ONLY_SELF = "only_self"  # the sample is the group's only success
    NO_ANSWER = "no_answer"  # fallback `answer`, but the task has no reference answer
    BANK_EMPTY = "bank_empty"  # fallback `bank`, but no earlier success is banked
    NO_PLACEBO = "no_placebo"  # peer_source placebo, but no other prompt of the batch has a success
    NO_REFERENCE = "no_reference"  # peer_source reference, but the task has no reference solution


@dataclass(frozen=True)
class CarriedPeer:
    """A successful solution the tag carries rather than names in the group: a banked
    earlier rollout of the prompt, a placebo, or the reference solution."""

    ids: np.ndarray  # int32 response token ids
    text: str  # decoded response
    group_id: str  # the group it came from (reference: the group it stands in for)
    policy_version: int  # the version that generated it (for the staleness bound)


@dataclass(frozen=True)
class PeerTag:
    """Where sample i's teacher context comes from."""

    source: PeerSource
    index: int | None = None  # peer's index in the group when source is GROUP
    carried: CarriedPeer | None = None  # the peer when source is BANK, PLACEBO or REFERENCE
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
    bank: CarriedPeer | None = None,
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


def _fallback(fallback: str, reason: NoPeer, has_answer: bool, bank: CarriedPeer | None) -> PeerTag:
    if fallback == "answer":
        if has_answer:
            return PeerTag(PeerSource.ANSWER, reason=reason)
        return PeerTag(PeerSource.NONE, reason=NoPeer.NO_ANSWER)
    if fallback == "bank":
        if bank is not None:
            return PeerTag(PeerSource.BANK, carried=bank, reason=reason)
        return PeerTag(PeerSource.NONE, reason=NoPeer.BANK_EMPTY)
    return PeerTag(PeerSource.NONE, reason=reason)


@dataclass(frozen=True)
class ResolvedPeer:
    """The successful peer a sample's credit is measured against."""

    text: str  # decoded response (what HSD's teacher reads)
    ids: list[int]  # token ids (the divergence is measured on these)
    ref: str  # "group_id/index", or "group_id/bank" (placebo, reference), for the credit log


def resolve_peer(group: RolloutGroup, tag: PeerTag) -> ResolvedPeer | None:
    """The peer ``tag`` names in ``group`` (or carries), or None."""
    if tag.source is PeerSource.GROUP and tag.index is not None:
        peer = group.samples[tag.index]
        return ResolvedPeer(peer.text, peer.ids.tolist(), f"{group.group_id}/{tag.index}")
    if tag.carried is not None:
        return ResolvedPeer(tag.carried.text, tag.carried.ids.tolist(), f"{tag.carried.group_id}/{tag.source}")
    return None


def substitute_peers(
    groups: Sequence[RolloutGroup],
    tags: Sequence[Sequence[PeerTag]],
    source: str,
    reference: Callable[[RolloutGroup], CarriedPeer | None] | None,
    seed: int = 0,
) -> list[list[PeerTag]]:
    """The batch's tags with every sample's peer (GROUP or BANK) replaced by ``source``'s.

    ``group``: unchanged. ``placebo``: a success of a group of another prompt in the batch,
    drawn uniformly (seeded by the group's content; none: NONE, ``NO_PLACEBO``). ``reference``:
    ``reference(group)`` (None: NONE, ``NO_REFERENCE``). Samples without a peer (the
    fallbacks) keep their tag, so that an arm distils the same samples as HSD does.
    """
    if source not in ("group", "placebo", "reference"):
        raise ValueError(f"unknown peer source {source!r}")
    if source == "group":
        return [list(t) for t in tags]
    out = []
    for group, group_tags in zip(groups, tags, strict=True):
        peered = [t.source in (PeerSource.GROUP, PeerSource.BANK) for t in group_tags]
        if not any(peered):
            out.append(list(group_tags))
            continue
        if source == "reference":
            if reference is None:
                raise ValueError("peer source 'reference' needs a reference lookup")
            carried = reference(group)
            missing = NoPeer.NO_REFERENCE
        else:
            others = [(g, s) for g in groups if g.prompt_id != group.prompt_id for s in g.samples if s.success]
            g, s = random.Random(f"{seed}:{group.content_key}").choice(others) if others else (None, None)
            carried = CarriedPeer(s.ids, s.text, g.group_id, g.policy_version) if others else None
            missing = NoPeer.NO_PLACEBO
        new = PeerTag(PeerSource(source), carried=carried) if carried else PeerTag(PeerSource.NONE, reason=missing)
        out.append([new if p else t for t, p in zip(group_tags, peered, strict=True)])
    return out
