"""From replay groups to training samples (each method builds its own: student view,
teacher view, μ, A_i) and from samples to micro-batches within a token budget; before
that, the batch's peers swapped for an ablation's (``algorithm.peer_source``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from core.records import RolloutGroup
from methods.base import Method, TrainingSample
from methods.peers import CarriedPeer, PeerSource, substitute_peers

if TYPE_CHECKING:
    from learner.replay import TaggedGroup


class ReferencePeers:
    """Each prompt's reference solution as a peer (``peer_source = "reference"``),
    tokenised once per prompt; None where the task has none for it."""

    def __init__(self, task: Any, tokenizer: Any) -> None:
        self.task, self.tokenizer = task, tokenizer
        self.ids: dict[str, np.ndarray | None] = {}

    def __call__(self, group: RolloutGroup) -> CarriedPeer | None:
        if group.prompt_id not in self.ids:
            try:
                text = self.task.problem(group.prompt_id).reference
            except (KeyError, ValueError):  # a prompt id this task did not make (e.g. external prompts)
                text = None
            self.ids[group.prompt_id] = None if text is None else np.asarray(
                self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int32)
        ids = self.ids[group.prompt_id]
        if ids is None:
            return None
        return CarriedPeer(ids, self.tokenizer.decode(ids), group.group_id, group.policy_version)


def peer_is_reference(batch: Sequence[TaggedGroup],
                      reference: Callable[[RolloutGroup], CarriedPeer | None]) -> float | None:
    """Of the batch's samples distilled from an in-group peer, the share whose peer is the
    task's reference solution, text for text (None: no such sample, or no references): on
    the table chain nearly every success is the reference; a task with several valid paths
    shows here how often a peer is another one."""
    same = []
    for t in batch:
        peers = [t.group.samples[tag.index] for tag in t.tags if tag.source is PeerSource.GROUP]
        if peers and (carried := reference(t.group)) is not None:
            same += [peer.text.strip() == carried.text.strip() for peer in peers]
    return sum(same) / len(same) if same else None


def with_peer_source(batch: Sequence[TaggedGroup], source: str,
                     reference: Callable[[RolloutGroup], CarriedPeer | None] | None, seed: int) -> list[TaggedGroup]:
    """The batch with its tags from :func:`methods.peers.substitute_peers`."""
    tags = substitute_peers([t.group for t in batch], [t.tags for t in batch], source, reference, seed)
    return [dataclasses.replace(t, tags=new) for t, new in zip(batch, tags, strict=True)]


def build_samples(batch: Sequence[TaggedGroup], tokenizer: Any, method: Method,
                  on_unusable: Callable[[TaggedGroup, Exception], None] | None = None) -> list[TrainingSample]:
    """Every group's training samples. With ``on_unusable``, a group whose samples cannot
    be made (whatever the error: its record is hostile or broken in a way validation did
    not foresee) is handed to it and left out; without, the error propagates."""
    out = []
    for t in batch:
        try:
            out.extend(method.training_samples(t.group, t.tags, tokenizer))
        except Exception as err:
            if on_unusable is None:
                raise
            on_unusable(t, err)
    return out


def length_buckets(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Indices grouped so that each group's padded size (rows × longest sequence) stays
    within ``token_budget``; sequences of similar length go together (less padding)."""
    return _fill(sorted(range(len(lengths)), key=lengths.__getitem__), lengths, token_budget)


def _fill(order: Sequence[int], lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """``order`` cut into consecutive groups whose rows × longest stays within the budget."""
    groups, current, longest = [], [], 0
    for k in order:
        if current and max(longest, lengths[k]) * (len(current) + 1) > token_budget:
            groups.append(current)
            current, longest = [], 0
        current.append(k)
        longest = max(longest, lengths[k])
    if current:
        groups.append(current)
    return groups


def microbatches(samples: Sequence[TrainingSample], token_budget: int) -> list[list[int]]:
    """The student passes: :func:`length_buckets` over the student views."""
    return length_buckets([len(s.student.ids) for s in samples], token_budget)


def teacher_batches(samples: Sequence[TrainingSample], indices: Sequence[int], token_budget: int) -> list[list[int]]:
    """The teacher passes (no gradient) over those of ``indices`` that have a teacher view,
    within the token budget. Views that share a context (a group's prompt + peer) are kept
    next to each other, so that one pass runs that context once
    (learner.logprobs.shared_prefix_hidden); contexts in order of length."""
    rows = [k for k in indices if samples[k].teacher is not None]
    lengths = {k: len(samples[k].teacher.ids) for k in rows}
    context = {k: tuple(samples[k].teacher.ids[: samples[k].teacher.start]) for k in rows}
    order = sorted(rows, key=lambda k: (len(context[k]), context[k], lengths[k]))
    return [[order[i] for i in group] for group in _fill(range(len(order)), [lengths[k] for k in order], token_budget)]
