"""From replay groups to training samples: the student view, the teacher view (per method
and peer tag), the behaviour log-probs μ, and the outcome advantage A_i. For `srt`, the
accepted revisions instead, each after its reviser context (a supervised target)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from learner.context import ScoringInput, srt_input, student_input, teacher_input
from learner.losses import group_advantages
from services.config import AlgorithmConfig
from services.peers import PeerSource
from services.replay import TaggedGroup

TEACHER_METHODS = ("hsd", "opsd", "sdzero")


@dataclass
class TrainingSample:
    student: ScoringInput  # x ++ y as the actor sampled it
    teacher: ScoringInput | None  # c ++ y, or None when the sample is not distilled
    behaviour: torch.Tensor  # μ(y_t) [n]
    advantage: float  # A_i
    reward: float
    success: bool
    policy_version: int
    group_id: str
    index: int  # sample index in its group
    peer_ids: list[int] | None  # y⁺: the successful peer the divergence is measured against (HSD's teacher reads it)
    peer_ref: str | None  # "group_id/index" of that peer, for the credit log

    @property
    def length(self) -> int:
        return self.student.length


def _peer(t: TaggedGroup, i: int) -> tuple[str | None, list[int] | None, str | None]:
    tag = t.tags[i]
    if tag.source is PeerSource.GROUP:
        peer = t.group.samples[tag.index]
        return peer.text, peer.ids.tolist(), f"{t.group.group_id}/{tag.index}"
    if tag.source is PeerSource.BANK and tag.bank is not None:
        return tag.bank.text, tag.bank.ids.tolist(), f"{tag.bank.group_id}/bank"
    return None, None, None


def build_samples(batch: Sequence[TaggedGroup], tokenizer: Any, algo: AlgorithmConfig) -> list[TrainingSample]:
    out = []
    for t in batch:
        g = t.group
        rewards = torch.tensor([s.reward for s in g.samples], dtype=torch.float32)
        advantages = group_advantages(rewards, algo.advantage)
        prompt_ids = g.prompt_ids.tolist()
        for i, s in enumerate(g.samples):
            if algo.method == "srt":
                out += _accepted_revision(g, i, tokenizer)
                continue
            if s.ids.size == 0:
                continue  # nothing to score or train on
            y = s.ids.tolist()
            teacher = peer_ids = peer_ref = None
            if algo.method in TEACHER_METHODS:
                # every method's credit is measured against the sample's successful peer (its
                # divergence statistics compare teachers); only HSD's teacher reads the peer
                peer_text, peer_ids, peer_ref = _peer(t, i)
                teacher = teacher_input(
                    algo.method, tokenizer, g.prompt, y, tag=t.tags[i], peer_text=peer_text,
                    answer=g.answer, success=s.success, peer_with_answer=algo.peer_with_answer)
                if teacher is None:
                    peer_ids = peer_ref = None
            out.append(TrainingSample(
                student=student_input(prompt_ids, y), teacher=teacher,
                behaviour=torch.from_numpy(np.asarray(s.logprobs, dtype=np.float32).copy()),
                advantage=float(advantages[i]), reward=s.reward, success=s.success,
                policy_version=g.policy_version, group_id=g.group_id, index=i,
                peer_ids=peer_ids, peer_ref=peer_ref))
    return out


def _accepted_revision(g, i: int, tokenizer: Any) -> list[TrainingSample]:
    """`srt`: the sample's revision as a supervised target, if the verifier accepted it."""
    s = g.samples[i]
    r = s.revision
    if r is None or not r.success or r.ids.size == 0:
        return []
    return [TrainingSample(
        student=srt_input(tokenizer, g.prompt, s.ids.tolist(), s.success, r.ids.tolist()), teacher=None,
        behaviour=torch.from_numpy(np.asarray(r.logprobs, dtype=np.float32).copy()),
        advantage=0.0, reward=s.reward, success=s.success, policy_version=g.policy_version,
        group_id=g.group_id, index=i, peer_ids=None, peer_ref=None)]


def length_buckets(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Indices grouped so that each group's padded size (rows × longest sequence) stays
    within ``token_budget``; sequences of similar length go together (less padding)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
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
    """:func:`length_buckets` over each sample's longer view (student or teacher)."""
    return length_buckets([max(len(s.student.ids), len(s.teacher.ids) if s.teacher else 0) for s in samples],
                          token_budget)
