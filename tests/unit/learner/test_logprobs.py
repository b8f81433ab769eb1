"""The head route (hidden states at response positions, logits a chunk of rows at a time,
the loss's gradient taken per chunk) gives the dense route's log-probs, top-k logits, loss
and gradients; teacher scoring with shared contexts gives the padded batch's."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from core.views import ScoringInput
from learner.logprobs import (
    dense_response_logits,
    head_loss,
    head_scores,
    logits_are_linear_in_hidden,
    response_hidden,
    shared_prefix_hidden,
    split_causal_lm,
    token_logprobs,
)


def _inputs(rng: random.Random, contexts: list[list[int]], rows: int) -> list[ScoringInput]:
    out = []
    for i in range(rows):
        c = contexts[i % len(contexts)]
        y = [rng.randrange(5, 60) for _ in range(rng.randrange(1, 14))]  # one-token responses too
        out.append(ScoringInput(c + y, len(c), len(y)))
    return out


def _contexts(rng: random.Random, n: int) -> list[list[int]]:
    return [[rng.randrange(5, 60) for _ in range(rng.randrange(3, 40))] for _ in range(n)]


@pytest.mark.parametrize("n_contexts", [1, 3])
def test_shared_contexts_score_like_the_padded_batch(tiny_model_dir, n_contexts):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rng = random.Random(n_contexts)
    inputs = _inputs(rng, _contexts(rng, n_contexts), 9)
    backbone, weight = split_causal_lm(model)
    with torch.no_grad():
        shared = shared_prefix_hidden(backbone, inputs, "cpu")
        padded = response_hidden(backbone, inputs, 0, "cpu")
    assert shared is not None
    assert torch.equal(shared[1], padded[1]) and torch.equal(shared[2], padded[2])
    got = head_scores(shared[0], weight, shared[1], shared[2])[0]
    want = head_scores(padded[0], weight, padded[1], padded[2])[0]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_no_shared_context_falls_back_to_the_caller(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    inputs = _inputs(random.Random(0), [[5, 6, 7], [8, 9]], 2)
    assert shared_prefix_hidden(model.get_decoder(), inputs, "cpu") is None


@pytest.mark.parametrize("chunk_tokens", [1, 13, 10_000])
def test_head_scores_equal_the_dense_logits(tiny_model_dir, chunk_tokens):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert logits_are_linear_in_hidden(model, (1, 2, 3))
    rng = random.Random(1)
    inputs = _inputs(rng, _contexts(rng, 5), 5)
    with torch.no_grad():
        logits, targets, mask = dense_response_logits(model, inputs, 0)
        hidden, h_targets, h_mask = response_hidden(model.get_decoder(), inputs, 0, "cpu")
    assert torch.equal(targets, h_targets) and torch.equal(mask, h_mask)
    scaled = logits / 0.7
    logp, (values, ids) = head_scores(hidden, model.get_output_embeddings().weight, targets, mask,
                                      temperature=0.7, chunk_tokens=chunk_tokens, topk=6)
    torch.testing.assert_close(logp, token_logprobs(scaled, targets) * mask, rtol=0, atol=1e-5)
    top = scaled.topk(6, dim=-1)
    torch.testing.assert_close(values, top.values, rtol=0, atol=1e-5)
    torch.testing.assert_close(scaled.gather(-1, ids), top.values, rtol=0, atol=1e-5)


def test_head_loss_and_its_gradients_equal_the_dense_route(tiny_model_dir):
    """A loss that is non-linear in both the log-probs and the logits (squared log-probs
    plus a log-sum-exp over 3 fixed tokens), with a per-row normalisation."""
    rng = random.Random(2)
    inputs = _inputs(rng, _contexts(rng, 4), 7)
    picks = torch.tensor([5, 9, 40])

    def loss_of(rows, logits, targets, mask):
        logp = token_logprobs(logits, targets[rows]) * mask[rows]
        extra = torch.logsumexp(logits[..., picks], -1) * mask[rows]
        return (((logp ** 2).sum(-1) / mask[rows].sum(-1)).sum() + 0.1 * extra.sum()) / len(inputs)

    grads = {}
    for route in ("dense", "head"):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        if route == "dense":
            logits, targets, mask = dense_response_logits(model, inputs, 0)
            loss = loss_of(slice(None), logits.float() / 0.7, targets, mask)
        else:
            backbone, weight = split_causal_lm(model)
            hidden, targets, mask = response_hidden(backbone, inputs, 0, "cpu")
            loss = head_loss(hidden, weight, lambda rows, z, t=targets, m=mask: loss_of(rows, z, t, m),
                             temperature=0.7, chunk_tokens=20)
        (loss * 1.5).backward()  # the incoming gradient scales both of the head's gradients
        grads[route] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(grads["head"][0], grads["dense"][0], rtol=0, atol=1e-5)
    assert grads["head"][1].keys() == grads["dense"][1].keys()
    for name, g in grads["dense"][1].items():
        torch.testing.assert_close(grads["head"][1][name], g, rtol=1e-4, atol=1e-5, msg=name)
    assert any(g.abs().sum() > 0 for g in grads["head"][1].values())
