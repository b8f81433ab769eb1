"""From replay groups to training samples (each method builds its own: student view,
teacher view, μ, A_i) and from samples to micro-batches within a token budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from methods.base import Method, TrainingSample

if TYPE_CHECKING:
    from learner.replay import TaggedGroup


def build_samples(batch: Sequence[TaggedGroup], tokenizer: Any, method: Method) -> list[TrainingSample]:
    return [sample for t in batch for sample in method.training_samples(t.group, t.tags, tokenizer)]


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
