"""HSD (Hindsight Self-Distillation): the teacher is the model conditioned on a successful
peer y⁺ from the same group, so credit lands where a failed attempt diverged from it.

Teacher view: c = x + "Here is a correct solution to this problem:" y⁺ (+ the reference
answer when ``peer_with_answer``) + closing, then y. A sample without an in-group peer
falls back as its :class:`~methods.peers.PeerTag` says: a banked earlier success of the
same prompt, the reference answer (OPSD's view), or no teacher. Successful samples are
not distilled (``distill = "failed"``, the paper's setting: they train on the outcome term
alone). ``peer_source`` swaps the peer for an ablation's (methods.peers.substitute_peers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.prompts import Messages, render_prompt_ids, with_user_suffix
from core.records import RolloutGroup
from core.views import ScoringInput, scoring_input
from methods.base import Method
from methods.opsd import opsd_input
from methods.peers import PeerSource, PeerTag, resolve_peer
from methods.templates import DEFAULT, Templates


def hsd_input(tokenizer: Any, prompt: str | Messages, response: Sequence[int], peer_text: str,
              answer: str | None = None, templates: Templates = DEFAULT) -> ScoringInput:
    """Teacher sees a successful peer y⁺ (and, optionally, the reference answer)."""
    suffix = templates.peer.format(peer=peer_text)
    if answer is not None:
        suffix += templates.answer.format(answer=answer)
    suffix += templates.closing
    return scoring_input(render_prompt_ids(tokenizer, with_user_suffix(prompt, suffix)), response)


class HSD(Method):
    name = "hsd"
    wants_peers = True
    reads_peer = True
    defaults = {"distill": "failed"}

    def teacher_view(self, tokenizer: Any, group: RolloutGroup, index: int, tag: PeerTag) -> ScoringInput | None:
        y = group.samples[index].ids.tolist()
        peer = resolve_peer(group, tag)
        if peer is not None:
            answer = group.answer if self.algo.peer_with_answer else None
            return hsd_input(tokenizer, group.prompt, y, peer.text, answer, self.templates)
        if tag.source is PeerSource.ANSWER and group.answer is not None:
            return opsd_input(tokenizer, group.prompt, y, group.answer, self.templates)
        return None
