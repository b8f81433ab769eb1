"""Token views: the sequence a model scores and where the response y sits in it.

The student's response y is never re-tokenized. Every view is ``ids = context_ids ++ y``
(:class:`ScoringInput`); ``start`` is the index of the scored copy of y's first token, so
log π(y_t | ·) is read from the logits at position ``start + t - 1`` (see
:func:`learner.logprobs.response_logits`). The student's view is built here; each
method's teacher view is built by its module in :mod:`methods`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


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


def scoring_input(context_ids: Sequence[int], response: Sequence[int]) -> ScoringInput:
    """c ++ y, with y's span."""
    return ScoringInput(list(context_ids) + list(response), len(context_ids), len(response))


def student_input(prompt_ids: Sequence[int], response: Sequence[int]) -> ScoringInput:
    """The student's own view: x ++ y, exactly as the actor sampled it."""
    return scoring_input(prompt_ids, response)


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


def stop_token_ids(tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    return {i for i in ids if i is not None}
