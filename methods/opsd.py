"""OPSD: the teacher is the model conditioned on the reference answer.

Teacher view: c = x + "The reference answer is: {answer}" + closing, then y. A sample of
a task without a reference answer is not distilled.
Every sample is distilled (``distill = "all"``); ``distill = "failed"`` is the ablation
that changes only the context against HSD.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.prompts import Messages, render_prompt_ids, with_user_suffix
from core.records import RolloutGroup
from core.views import ScoringInput, scoring_input
from methods.base import Method
from methods.peers import PeerTag
from methods.templates import DEFAULT, Templates


def opsd_input(tokenizer: Any, prompt: str | Messages, response: Sequence[int], answer: str,
               templates: Templates = DEFAULT) -> ScoringInput:
    """Teacher sees the reference answer: c = x + answer."""
    suffix = templates.answer.format(answer=answer) + templates.closing
    return scoring_input(render_prompt_ids(tokenizer, with_user_suffix(prompt, suffix)), response)


class OPSD(Method):
    name = "opsd"
    wants_peers = True  # not read by the teacher: the divergence statistics compare teachers

    def teacher_view(self, tokenizer: Any, group: RolloutGroup, index: int, tag: PeerTag) -> ScoringInput | None:
        if group.answer is None:
            return None
        return opsd_input(tokenizer, group.prompt, group.samples[index].ids.tolist(), group.answer, self.templates)
