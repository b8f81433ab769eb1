"""SD-Zero: the model as its own reviser, conditioned on its first attempt and the binary
reward, distilled back into the student.

Reviser context of an attempt y with reward r: x, then the assistant turn
``y ++ "\\n\\n" ++ P(r) ++ "\\n\\n"`` (the attempt without its trailing stop tokens).
Teacher view: that context followed by y again; the loss reads the second, complete copy.

Phase 2 of the reference (princeton-pli/Self-Distillation-Zero): the student and the
frozen teacher both start from the model that ``srt`` (phase 1) trained; the loss is the
top-64 mixed KL to the teacher (α = 0.5, both sides renormalised over the teacher's top k)
with no outcome advantage. Those are this method's defaults (``Method.defaults``); a run
that sets any of these fields keeps its own value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.prompts import Messages, render_prompt_ids
from core.records import RolloutGroup
from core.views import ScoringInput, scoring_input, stop_token_ids
from methods.base import Method
from methods.peers import PeerTag
from methods.templates import DEFAULT, Templates


def reviser_context(tokenizer: Any, prompt: str | Messages, attempt: Sequence[int], success: bool,
                    stop_ids: set[int] | None = None, templates: Templates = DEFAULT) -> list[int]:
    """x, then the assistant turn y ++ "\\n\\n" ++ P(r) ++ "\\n\\n": where the reviser goes on.

    The attempt drops its trailing stop tokens (the turn goes on). SD-Zero's teacher reads
    a second copy of y after it; `srt` actors sample the revision from it.
    """
    first = attempt_body(tokenizer, attempt, stop_ids)
    separator = tokenizer.encode("\n\n" + templates.revision(bool(success)) + "\n\n", add_special_tokens=False)
    return render_prompt_ids(tokenizer, prompt) + first + list(separator)


def attempt_body(tokenizer: Any, attempt: Sequence[int], stop_ids: set[int] | None = None) -> list[int]:
    """The attempt without its trailing stop tokens (in the reviser context the turn goes on)."""
    stop_ids = stop_token_ids(tokenizer) if stop_ids is None else stop_ids
    body = list(attempt)
    while body and body[-1] in stop_ids:
        body.pop()
    return body


def sdzero_input(tokenizer: Any, prompt: str | Messages, response: Sequence[int], success: bool,
                 stop_ids: set[int] | None = None, templates: Templates = DEFAULT) -> ScoringInput:
    """Reviser view: x, then the assistant turn y ++ "\\n\\n" ++ P(r) ++ "\\n\\n" ++ y."""
    return scoring_input(reviser_context(tokenizer, prompt, response, success, stop_ids, templates), response)


class SDZero(Method):
    name = "sdzero"
    wants_peers = True  # not read by the teacher: the divergence statistics compare teachers
    defaults = {"loss": "topk", "topk": 64, "topk_alpha": 0.5, "advantage": "none", "teacher": "frozen"}

    def teacher_view(self, tokenizer: Any, group: RolloutGroup, index: int, tag: PeerTag) -> ScoringInput | None:
        s = group.samples[index]
        return sdzero_input(tokenizer, group.prompt, s.ids.tolist(), s.success, templates=self.templates)
