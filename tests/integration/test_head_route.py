"""The learner's head route (learner.logprobs: hidden states at response positions,
logits a chunk of rows at a time) trains exactly like the dense route (whole logits from
the model's forward), and so does the head route over packed micro-batches
(``learner.packing``: one row, no padding): for every method and both loss forms, the same
loss, credit δ, π_θold, entropy and gradients within 1e-5 (packed: the norms within 1e-5
relative, gradients within 5e-5), over two epochs (the second one
with r_t ≠ 1), and in small chunks (many per micro-batch) and micro-batches (many per step)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.config import load_config
from learner.batch import build_samples
from learner.trainer import TorchTrainer
from methods import make_method
from tests.integration.batches import real_groups, tagged


class DenseRouteTrainer(TorchTrainer):
    """The same engine, with the whole logits computed by the model's own forward."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.head_route = False


@pytest.mark.parametrize(("method", "loss"), [
    ("grpo", "sampled"), ("hsd", "sampled"), ("hsd", "topk"), ("opsd", "sampled"), ("opsd", "topk"),
    ("sdzero", "sampled"), ("sdzero", "topk"), ("srt", "sampled")])
def test_the_head_route_trains_like_the_dense_route(tiny_model_dir, method, loss):
    config = load_config(environ={}, overrides=[
        f'algorithm.method="{method}"', f'algorithm.loss="{loss}"', "algorithm.topk=7", "learner.lr=1e-3",
        "learner.epochs=2", "learner.microbatch_tokens=120", "learner.head_chunk_tokens=25",
        'algorithm.distill="all"'])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    samples = build_samples(tagged(real_groups(tiny_model_dir, 3)), tok, make_method(config.algorithm))
    packed_config = config.model_copy(deep=True)
    packed_config.learner.packing = True  # each micro-batch one row, no padding (learner.logprobs)
    runs = {}
    for route, cls, c in (("head", TorchTrainer, config), ("dense", DenseRouteTrainer, config),
                          ("packed", TorchTrainer, packed_config)):
        torch.manual_seed(0)
        trainer = cls(AutoModelForCausalLM.from_pretrained(tiny_model_dir), c, tok.pad_token_id)
        assert trainer.head_route == (route != "dense")
        assert len(trainer.plan(samples)) > 1
        result = trainer.train_step(samples)
        runs[route] = (result, {n: p.grad.clone() for n, p in trainer.model.named_parameters()})
    (head, head_grads), (dense, dense_grads) = runs["head"], runs["dense"]
    for key in ("loss", "grad_norm", "teacher_kl", "credit_sq", "rho_mean", "entropy"):
        assert head.metrics[key] == pytest.approx(dense.metrics[key], abs=1e-5), key
    packed, packed_grads = runs["packed"]
    for key in ("loss", "grad_norm", "teacher_kl", "credit_sq", "rho_mean", "entropy"):
        # other summation orders in attention: within 1e-5, relative for the norms (≈ 4 here)
        assert packed.metrics[key] == pytest.approx(head.metrics[key], rel=1e-5, abs=1e-5), f"packed: {key}"
    for k, delta in head.credit.items():
        torch.testing.assert_close(packed.credit[k], delta, rtol=0, atol=1e-5)
    for name, g in head_grads.items():
        # the masked attention sums in another order than the fused causal kernel: seen 1.7e-5
        torch.testing.assert_close(packed_grads[name], g, rtol=1e-4, atol=5e-5,
                                   msg=lambda m, name=name: f"packed: {name}: {m}")
    # the policy's entropy over the response tokens, by the model's own forward, sample by sample
    model, total, tokens = AutoModelForCausalLM.from_pretrained(tiny_model_dir), 0.0, 0
    with torch.no_grad():
        for s in samples:
            v = s.student
            logits = model(torch.tensor([v.ids])).logits[0, v.start - 1:v.start - 1 + v.length]
            total += float(torch.distributions.Categorical(logits=logits / config.actor.temperature).entropy().sum())
            tokens += v.length
    assert head.metrics["entropy"] == pytest.approx(total / tokens, abs=1e-5)
    assert head.credit.keys() == dense.credit.keys()
    assert bool(head.credit) == (method != "grpo" and method != "srt")
    for k, delta in dense.credit.items():
        torch.testing.assert_close(head.credit[k], delta, rtol=0, atol=1e-5)
    for name, g in dense_grads.items():  # the second epoch's gradient (ratio r_t ≠ 1)
        torch.testing.assert_close(head_grads[name], g, rtol=1e-4, atol=1e-5, msg=name)
    assert any(g.abs().sum() > 0 for g in head_grads.values())
