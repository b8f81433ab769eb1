"""Teacher scoring with shared contexts gives the padded batch's response logits."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from core.views import ScoringInput
from learner.logprobs import pad_batch, response_logits, shared_prefix_logits, token_logprobs


def _inputs(rng: random.Random, contexts: list[list[int]], rows: int) -> list[ScoringInput]:
    out = []
    for i in range(rows):
        c = contexts[i % len(contexts)]
        y = [rng.randrange(5, 60) for _ in range(rng.randrange(1, 14))]  # one-token responses too
        out.append(ScoringInput(c + y, len(c), len(y)))
    return out


@pytest.mark.parametrize("n_contexts", [1, 3])
def test_shared_contexts_score_like_the_padded_batch(tiny_model_dir, n_contexts):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rng = random.Random(n_contexts)
    contexts = [[rng.randrange(5, 60) for _ in range(rng.randrange(3, 40))] for _ in range(n_contexts)]
    inputs = _inputs(rng, contexts, 9)
    with torch.no_grad():
        shared = shared_prefix_logits(model, inputs)
        ids, attn = pad_batch(inputs, 0)
        padded = response_logits(model(input_ids=ids, attention_mask=attn).logits, inputs)
    assert shared is not None
    assert torch.equal(shared[1], padded[1]) and torch.equal(shared[2], padded[2])
    mask = padded[2]
    torch.testing.assert_close(token_logprobs(shared[0], shared[1]) * mask,
                               token_logprobs(padded[0], padded[1]) * mask, rtol=0, atol=1e-5)


def test_no_shared_context_falls_back_to_the_caller(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rng = random.Random(0)
    inputs = _inputs(rng, [[5, 6, 7], [8, 9]], 2)
    assert shared_prefix_logits(model, inputs) is None
