"""Teacher contexts: the token sequence the teacher scores, and where y sits in it.

The student's response y is never re-tokenized. Every builder returns
``ids = context_ids ++ y`` (SD-Zero: ``context_ids ++ y' ++ sep ++ y``) as a
:class:`ScoringInput`; ``start`` is the index of the scored copy of y's first token, so
log π(y_t | ·) is read from the logits at position ``start + t - 1`` (see
:func:`learner.logprobs.response_logprobs`).

| method | teacher context c                                                         |
|--------|----------------------------------------------------------------------------|
| hsd    | x + a successful peer y⁺ of the same group (+ the reference answer)       |
| opsd   | x + the reference answer/solution                                          |
| sdzero | x, assistant turn ``y ++ "\\n\\n" ++ P(r) ++ "\\n\\n"``, then y again          |
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.peers import PeerSource, PeerTag
from services.prompts import Messages, render_prompt_ids, with_user_suffix

PEER_TEMPLATE = "\n\nHere is a correct solution to this problem:\n{peer}"
ANSWER_TEMPLATE = "\n\nThe reference answer is: {answer}"
CONTEXT_CLOSING = "\n\nNow write a solution of your own."
REVISION_PHRASES = {
    True: "Let me rephrase the above solution.",
    False: "Wait, this response is wrong. Let me correct it.",
}


class VocabularyMismatch(AssertionError):
    """Student and teacher do not share one tokenizer, so δ_t would compare unlike tokens."""


@dataclass(frozen=True)
class ScoringInput:
    """A sequence to score and the span of the response in it."""

    ids: list[int]  # full input ids
    start: int  # index in ``ids`` of the scored response's first token
    length: int  # number of response tokens; ids[start:start+length] == y

    def __post_init__(self) -> None:
        if self.start < 1:
            raise ValueError("a response needs at least one context token before it")
        if self.start + self.length != len(self.ids):
            raise ValueError("the scored response must end the sequence")

    @property
    def response(self) -> list[int]:
        return self.ids[self.start : self.start + self.length]


def assert_shared_vocabulary(student_tokenizer: Any, teacher_tokenizer: Any) -> None:
    """Raise :class:`VocabularyMismatch` unless both tokenizers map tokens to ids identically."""
    if student_tokenizer is teacher_tokenizer:
        return
    a, b = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if a != b:
        only_a, only_b = len(a.keys() - b.keys()), len(b.keys() - a.keys())
        raise VocabularyMismatch(
            f"student and teacher vocabularies differ ({len(a)} vs {len(b)} entries, "
            f"{only_a} only in the student, {only_b} only in the teacher)"
        )


def _join(context_ids: Sequence[int], response: Sequence[int]) -> ScoringInput:
    return ScoringInput(list(context_ids) + list(response), len(context_ids), len(response))


def student_input(prompt_ids: Sequence[int], response: Sequence[int]) -> ScoringInput:
    """The student's own view: x ++ y, exactly as the actor sampled it."""
    return _join(prompt_ids, response)


def opsd_input(
    tokenizer: Any, prompt: str | Messages, response: Sequence[int], answer: str
) -> ScoringInput:
    """Teacher sees the reference answer: c = x + answer."""
    suffix = ANSWER_TEMPLATE.format(answer=answer) + CONTEXT_CLOSING
    return _join(render_prompt_ids(tokenizer, with_user_suffix(prompt, suffix)), response)


def hsd_input(
    tokenizer: Any,
    prompt: str | Messages,
    response: Sequence[int],
    peer_text: str,
    answer: str | None = None,
) -> ScoringInput:
    """Teacher sees a successful peer y⁺ (and, optionally, the reference answer)."""
    suffix = PEER_TEMPLATE.format(peer=peer_text)
    if answer is not None:
        suffix += ANSWER_TEMPLATE.format(answer=answer)
    suffix += CONTEXT_CLOSING
    return _join(render_prompt_ids(tokenizer, with_user_suffix(prompt, suffix)), response)


def stop_token_ids(tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    return {i for i in ids if i is not None}


def reviser_context(
    tokenizer: Any,
    prompt: str | Messages,
    attempt: Sequence[int],
    success: bool,
    stop_ids: set[int] | None = None,
) -> list[int]:
    """x, then the assistant turn y ++ "\n\n" ++ P(r) ++ "\n\n": where the reviser goes on.

    The attempt drops its trailing stop tokens (the turn goes on). SD-Zero's teacher reads
    a second copy of y after it; `srt` actors sample the revision from it.
    """
    stop_ids = stop_token_ids(tokenizer) if stop_ids is None else stop_ids
    first = list(attempt)
    while first and first[-1] in stop_ids:
        first.pop()
    separator = tokenizer.encode(
        "\n\n" + REVISION_PHRASES[bool(success)] + "\n\n", add_special_tokens=False
    )
    return render_prompt_ids(tokenizer, prompt) + first + list(separator)


def sdzero_input(
    tokenizer: Any,
    prompt: str | Messages,
    response: Sequence[int],
    success: bool,
    stop_ids: set[int] | None = None,
) -> ScoringInput:
    """Reviser view: x, then the assistant turn y ++ "\n\n" ++ P(r) ++ "\n\n" ++ y; the
    loss is read on the second, complete copy."""
    return _join(reviser_context(tokenizer, prompt, response, success, stop_ids), response)


def srt_input(
    tokenizer: Any,
    prompt: str | Messages,
    attempt: Sequence[int],
    success: bool,
    revision: Sequence[int],
) -> ScoringInput:
    """SD-Zero phase 1: the reviser context of an attempt, then the revision the actor
    sampled there (the supervised target)."""
    return _join(reviser_context(tokenizer, prompt, attempt, success), revision)


def teacher_input(
    method: str,
    tokenizer: Any,
    prompt: str | Messages,
    response: Sequence[int],
    *,
    tag: PeerTag | None = None,
    peer_text: str | None = None,
    answer: str | None = None,
    success: bool = False,
    peer_with_answer: bool = False,
) -> ScoringInput | None:
    """The teacher's view of one sample, or None when the sample is not distilled.

    ``hsd`` needs the sample's :class:`PeerTag`; for a GROUP tag ``peer_text`` is the
    peer's decoded response (the bank carries its own text).
    """
    if method == "opsd":
        if answer is None:
            return None
        return opsd_input(tokenizer, prompt, response, answer)
    if method == "sdzero":
        return sdzero_input(tokenizer, prompt, response, success)
    if method != "hsd":
        raise ValueError(f"method {method!r} has no teacher")
    if tag is None:
        raise ValueError("hsd needs the sample's peer tag")
    if tag.source is PeerSource.GROUP:
        if peer_text is None:
            raise ValueError("hsd with an in-group peer needs the peer's text")
        return hsd_input(tokenizer, prompt, response, peer_text, answer if peer_with_answer else None)
    if tag.source is PeerSource.BANK:
        assert tag.bank is not None
        return hsd_input(tokenizer, prompt, response, tag.bank.text, answer if peer_with_answer else None)
    if tag.source is PeerSource.ANSWER and answer is not None:
        return opsd_input(tokenizer, prompt, response, answer)
    return None
