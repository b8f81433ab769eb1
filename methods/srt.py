"""``srt`` — SD-Zero's phase 1 (self-revision training): actors sample a reviser
continuation after each attempt (:func:`methods.sdzero.reviser_context`) and score it;
the learner trains on the accepted revisions as supervised targets,
ℓ_t = −log π_θ(y'_t | reviser context).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from core.prompts import Messages
from core.records import RolloutGroup
from core.views import ScoringInput, scoring_input
from methods.base import LossTerms, Method, TrainingSample, behaviour_logprobs
from methods.losses import supervised_loss
from methods.peers import PeerTag
from methods.sdzero import reviser_context


def srt_input(tokenizer: Any, prompt: str | Messages, attempt: Sequence[int], success: bool,
              revision: Sequence[int]) -> ScoringInput:
    """The reviser context of an attempt, then the revision the actor sampled there."""
    return scoring_input(reviser_context(tokenizer, prompt, attempt, success), revision)


class SRT(Method):
    name = "srt"

    def revision_contexts(self, tokenizer: Any, prompt: Any, attempts: Sequence[Sequence[int]],
                          successes: Sequence[bool]) -> list[list[int]]:
        return [reviser_context(tokenizer, prompt, a, ok) for a, ok in zip(attempts, successes, strict=True)]

    def training_samples(self, group: RolloutGroup, tags: Sequence[PeerTag], tokenizer: Any) -> list[TrainingSample]:
        """Each sample's revision as a supervised target, if the verifier accepted it."""
        out = []
        for i, s in enumerate(group.samples):
            r = s.revision
            if r is None or not r.success or r.ids.size == 0:
                continue
            out.append(TrainingSample(
                student=srt_input(tokenizer, group.prompt, s.ids.tolist(), s.success, r.ids.tolist()),
                teacher=None, behaviour=behaviour_logprobs(r.logprobs), advantage=0.0, reward=s.reward,
                success=s.success, policy_version=group.policy_version, group_id=group.group_id, index=i,
                peer_ids=None, peer_ref=None))
        return out

    def loss(self, t: LossTerms) -> torch.Tensor:
        return supervised_loss(t.logprobs, t.mask, self.algo.normalization, **t.norm)[0]
