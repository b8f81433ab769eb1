"""The Method interface: what one training method decides, asked at each boundary.

::

    actor     revision_contexts(...)    an optional second generation stage (srt)
    replay    wants_peers               tag every sample with a successful peer
              reads_peer                the teacher reads that peer (peer_source ablations)
    learner   training_samples(...)     student view, teacher view, outcome advantage A_i
              teacher_topk              what the loss reads of the teacher (top-k logits or log π_T)
              loss(terms)               the method's loss terms from methods.losses / .credit
    start     defaults                  algorithm settings the method's paper uses, applied
                                        where the run leaves a field unset (methods.configure)
              check(algo)               settings the method refuses (ConfigError at start)

The default implementation is the outcome-advantage policy gradient with an optional
teacher (``teacher_view``): GRPO uses it as is, HSD / OPSD / SD-Zero add their teacher
view, ``srt`` replaces the samples and the loss. Each method is one module in this
package, registered in :mod:`methods` (``make_method``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from core.config import AlgorithmConfig
from core.records import RolloutGroup
from core.views import ScoringInput, student_input
from methods.credit import token_credit
from methods.losses import (
    combined_advantages,
    group_advantages,
    policy_gradient_loss,
    reference_kl_advantage,
    supervised_loss,
    topk_distillation_loss,
)
from methods.peers import PeerTag, resolve_peer
from methods.templates import Templates


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
    peer_ids: list[int] | None  # y⁺: the successful peer the divergence is measured against
    peer_ref: str | None  # "group_id/index" of that peer, for the credit log

    @property
    def length(self) -> int:
        return self.student.length


@dataclass
class LossTerms:
    """One micro-batch's tensors, right-padded to T response positions."""

    logprobs: torch.Tensor  # [B, T] log π_θ(y_t), with grad
    old_logprobs: torch.Tensor  # [B, T] log π_θold(y_t), detached
    mask: torch.Tensor  # [B, T] real response tokens
    is_weights: torch.Tensor  # [B, T] behaviour-correction weights w_t of the sampled token
    # [B, T] prefix ratios of the state s_t (learner.staleness.prefix_weights); loss `topk`
    state_weights: torch.Tensor | None
    outcome: torch.Tensor  # [B] A_i
    distilled: torch.Tensor  # [B] bool: the sample has a teacher view
    teacher_logprobs: torch.Tensor | None  # [B, T] log π_T(y_t) (0 where not distilled); loss `sampled`
    # loss `topk`: the teacher's k largest logits and the student's at the same tokens, [B, T, k]
    # (temperature-scaled; arbitrary where not distilled, which the credit mask hides)
    teacher_topk_logits: torch.Tensor | None
    student_topk_logits: torch.Tensor | None  # with grad
    reference_logprobs: torch.Tensor | None  # [B, T] log π_θ0(y_t) where algorithm.kl_coef > 0
    norm: dict[str, float]  # the global batch's counts for methods.losses.aggregate


def behaviour_logprobs(logprobs: Any) -> torch.Tensor:
    """μ(y_t) from a record's float32 array, as a tensor the trainer owns."""
    return torch.from_numpy(np.asarray(logprobs, dtype=np.float32).copy())


class Method:
    name: ClassVar[str]
    wants_peers: ClassVar[bool] = False  # the replay buffer tags samples with successful peers
    reads_peer: ClassVar[bool] = False  # the teacher's context holds the peer (algorithm.peer_source)
    defaults: ClassVar[Mapping[str, Any]] = {}  # [algorithm] field -> value, where the run sets none

    def __init__(self, algo: AlgorithmConfig) -> None:
        self.check(algo)
        self.algo = algo
        self.templates = Templates.of(algo)

    @classmethod
    def check(cls, algo: AlgorithmConfig) -> None:
        """Raise ValueError("field: reason") for settings this method cannot train with."""
        if algo.peer_source != "group" and not cls.reads_peer:
            raise ValueError(f"peer_source: method {cls.name}'s teacher reads no peer "
                             f"({algo.peer_source!r} is an ablation of hsd)")

    # ------------------------------------------------------------------ actor

    def revision_contexts(self, tokenizer: Any, prompt: Any, attempts: Sequence[Sequence[int]],
                          successes: Sequence[bool]) -> list[list[int] | None] | None:
        """Contexts to sample a second continuation from, one per attempt (None: that attempt
        gets none); None: the method has no second stage."""
        return None

    # ------------------------------------------------------------------ learner: samples

    def teacher_view(self, tokenizer: Any, group: RolloutGroup, index: int, tag: PeerTag) -> ScoringInput | None:
        """The teacher's view of sample ``index``; None: the sample is not distilled.
        Called for the samples ``algorithm.distill`` selects."""
        return None

    def training_samples(self, group: RolloutGroup, tags: Sequence[PeerTag], tokenizer: Any) -> list[TrainingSample]:
        rewards = torch.tensor([s.reward for s in group.samples], dtype=torch.float32)
        advantages = group_advantages(rewards, self.algo.advantage)
        prompt_ids = group.prompt_ids.tolist()
        out = []
        for i, s in enumerate(group.samples):
            if s.ids.size == 0:
                continue  # nothing to score or train on
            y = s.ids.tolist()
            distilled = self.algo.distill == "all" or not s.success
            teacher = self.teacher_view(tokenizer, group, i, tags[i]) if distilled else None
            # every teacher's credit is measured against the sample's successful peer (its
            # divergence statistics compare teachers); only HSD's teacher reads the peer
            peer = resolve_peer(group, tags[i]) if teacher is not None else None
            out.append(TrainingSample(
                student=student_input(prompt_ids, y), teacher=teacher, behaviour=behaviour_logprobs(s.logprobs),
                advantage=float(advantages[i]), reward=s.reward, success=s.success,
                policy_version=group.policy_version, group_id=group.group_id, index=i,
                peer_ids=peer.ids if peer else None, peer_ref=peer.ref if peer else None))
        return out

    # ------------------------------------------------------------------ learner: loss

    @property
    def teacher_topk(self) -> int:
        """What the loss reads of the teacher at a distilled token: its k largest logits
        (``teacher_topk_logits``) where k > 0, its log-prob of the sampled token
        (``teacher_logprobs``) where 0. The trainer scores the teacher for exactly this."""
        return self.algo.topk if self.algo.loss == "topk" else 0

    def loss(self, t: LossTerms) -> torch.Tensor:
        """Policy gradient with A_t = A_i + λ·δ_t (loss ``sampled``), or with A_i plus
        λ × the top-k mixed KL to the teacher (loss ``topk``); either with the KL penalty
        to θ0 in A_t where ``kl_coef`` > 0. See methods.losses."""
        a = self.algo
        credit_mask = t.mask & t.distilled.unsqueeze(-1)
        if t.teacher_logprobs is not None:
            credit = token_credit(t.teacher_logprobs, t.old_logprobs, credit_mask)
            advantages = combined_advantages(t.outcome, credit, credit_mask, a.credit_coef)
        else:
            advantages = t.outcome.unsqueeze(-1).expand_as(t.logprobs)
        if t.reference_logprobs is not None:
            advantages = advantages + reference_kl_advantage(t.old_logprobs, t.reference_logprobs, t.mask, a.kl_coef)
        loss = policy_gradient_loss(t.logprobs, t.old_logprobs, advantages, t.mask, t.is_weights,
                                    clip_low=a.ppo_clip_low, clip_high=a.ppo_clip_high,
                                    normalization=a.normalization, **t.norm)[0]
        if t.teacher_topk_logits is not None:
            loss = loss + a.credit_coef * topk_distillation_loss(
                t.student_topk_logits, t.teacher_topk_logits, credit_mask, alpha=a.topk_alpha,
                is_weights=t.state_weights, normalization=a.normalization, **t.norm)[0]
        return loss


class SupervisedMethod(Method):
    """A method whose training samples are targets: ℓ_t = −log π_θ(y_t | ·) (methods.losses
    ``supervised_loss``), no advantage, no teacher, no behaviour correction."""

    def loss(self, t: LossTerms) -> torch.Tensor:
        return supervised_loss(t.logprobs, t.mask, self.algo.normalization, **t.norm)[0]
