"""``srt`` — SD-Zero's phase 1, self-revision training (SRT), as the reference
(princeton-pli/Self-Distillation-Zero, ``prepare_data.py``) builds it.

Actors sample an attempt y_init from x; for a wrong attempt (and, with
``algorithm.srt_revise_correct``, a right one too) they sample a revision y_rev from the
reviser context x ++ y_init ++ P_r (:func:`methods.sdzero.reviser_context`) and score it.
A revision the verifier accepts makes the supervised targets of the two stages:

- stage 1, generation (wrong attempts only): x → y_init ++ P_r ++ y_rev, the whole
  mistake-and-revision stream as one completion;
- stage 2, revision: x ++ y_init ++ P_r → y_rev.

ℓ_t = −log π_θ(target_t | ·) over both. The reference runs the stages one after the other
over a collected dataset (stage 2 a small quota of it); here they are trained online, each
step on the revisions its batch accepted, both stages in the same update.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from core.prompts import Messages, render_prompt_ids
from core.records import RolloutGroup
from core.views import ScoringInput, scoring_input, student_input
from methods.base import SupervisedMethod, TrainingSample, behaviour_logprobs
from methods.peers import PeerTag
from methods.sdzero import attempt_body, reviser_context
from methods.templates import DEFAULT, Templates


def srt_input(tokenizer: Any, prompt: str | Messages, attempt: Sequence[int], success: bool,
              revision: Sequence[int], templates: Templates = DEFAULT) -> ScoringInput:
    """Stage 2 (revision): the reviser context of an attempt, then the revision."""
    return scoring_input(reviser_context(tokenizer, prompt, attempt, success, templates=templates), revision)


def srt_generation_input(tokenizer: Any, prompt: str | Messages, attempt: Sequence[int], success: bool,
                         revision: Sequence[int], templates: Templates = DEFAULT) -> ScoringInput:
    """Stage 1 (generation): x, then y_init ++ P_r ++ y_rev as one completion (the same
    tokens as stage 2's view; only where the scored part starts differs)."""
    prompt_ids = render_prompt_ids(tokenizer, prompt)
    context = reviser_context(tokenizer, prompt, attempt, success, templates=templates)
    return student_input(prompt_ids, context[len(prompt_ids):] + list(revision))


class SRT(SupervisedMethod):
    name = "srt"

    def revision_contexts(self, tokenizer: Any, prompt: Any, attempts: Sequence[Sequence[int]],
                          successes: Sequence[bool]) -> list[list[int] | None]:
        revise_correct = self.algo.srt_revise_correct
        return [reviser_context(tokenizer, prompt, a, ok, templates=self.templates) if revise_correct or not ok else None
                for a, ok in zip(attempts, successes, strict=True)]

    def training_samples(self, group: RolloutGroup, tags: Sequence[PeerTag], tokenizer: Any) -> list[TrainingSample]:
        """Stage 1 and stage 2 targets of every accepted revision of a wrong attempt;
        stage 2 only for a right attempt's (``srt_revise_correct``)."""
        out = []
        for i, s in enumerate(group.samples):
            r = s.revision
            if r is None or not r.success or r.ids.size == 0 or (s.success and not self.algo.srt_revise_correct):
                continue
            y, y_rev = s.ids.tolist(), r.ids.tolist()
            revision_mu = behaviour_logprobs(r.logprobs)
            views = [(srt_input(tokenizer, group.prompt, y, s.success, y_rev, self.templates), revision_mu)]
            if not s.success:
                generation = srt_generation_input(tokenizer, group.prompt, y, s.success, y_rev, self.templates)
                # μ of the stream: the attempt's and the revision's as sampled; P_r is forced (log μ = 0)
                attempt_mu = behaviour_logprobs(s.logprobs)[: len(attempt_body(tokenizer, y))]
                forced = torch.zeros(generation.length - len(y_rev) - attempt_mu.numel())
                views.append((generation, torch.cat([attempt_mu, forced, revision_mu])))
            out += [TrainingSample(
                student=view, teacher=None, behaviour=mu, advantage=0.0, reward=s.reward, success=s.success,
                policy_version=group.policy_version, group_id=group.group_id, index=i, peer_ids=None, peer_ref=None)
                for view, mu in views]
        return out
