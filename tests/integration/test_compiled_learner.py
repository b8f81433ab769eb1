"""``learner.compile``: the backbone's cache-free passes (the student's, with gradients, and
the teacher views that share no context) run through torch.compile and train like the
eager learner — the same loss, credit, entropy and gradients within 1e-5 over batches of
other lengths, and no recompilation for a new length — while the shared-context teacher
pass and generation keep the plain module (their KV cache would recompile it every call)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.config import load_config
from learner.batch import build_samples
from learner.trainer import TorchTrainer
from methods import make_method
from tests.integration.batches import real_groups, tagged


def _compiled_frames() -> int:
    return counters["stats"]["unique_graphs"]


def test_the_compiled_learner_trains_like_the_eager_one(tiny_model_dir):
    overrides = ['algorithm.method="hsd"', "learner.lr=1e-3", "learner.microbatch_tokens=120",
                 "learner.head_chunk_tokens=25", 'algorithm.distill="all"']
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    method = make_method(load_config(environ={}, overrides=overrides).algorithm)
    batches = [build_samples(tagged(real_groups(tiny_model_dir, 3, seed=seed)), tok, method) for seed in (0, 2, 1)]
    widths = {max(len(s.student.ids) for s in b) for b in batches}
    assert len(widths) == 3, "the batches should differ in length (dynamic shapes)"
    batches, later = batches[:2], batches[2]
    runs = {}
    for compiled in (False, True):
        config = load_config(environ={}, overrides=[*overrides, f"learner.compile={str(compiled).lower()}"])
        torch.manual_seed(0)
        trainer = TorchTrainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config, tok.pad_token_id)
        graphs = _compiled_frames()
        steps = []
        # one graph per grad mode and batch of one or more; past that dynamo would fall back
        # to eager silently (and the comparison would compare eager with eager)
        with torch._dynamo.config.patch(recompile_limit=4, fail_on_recompile_limit_hit=True):
            for batch in batches:
                result = trainer.train_step(batch)
                steps.append((result, {n: p.grad.clone() for n, p in trainer.model.named_parameters()}))
        assert (_compiled_frames() > graphs) == compiled, "compiled graphs only where learner.compile is on"
        runs[compiled] = (trainer, steps)
    for (eager, eager_grads), (fast, fast_grads) in zip(runs[False][1], runs[True][1], strict=True):
        assert fast.credit, "the batch should have distilled samples"
        for key in ("loss", "grad_norm", "teacher_kl", "credit_sq", "rho_mean", "entropy"):
            assert fast.metrics[key] == pytest.approx(eager.metrics[key], rel=1e-5, abs=1e-5), key
        for k, delta in eager.credit.items():
            torch.testing.assert_close(fast.credit[k], delta, rtol=0, atol=1e-5)
        for name, g in eager_grads.items():
            torch.testing.assert_close(fast_grads[name], g, rtol=1e-4, atol=1e-5, msg=name)

    # the first two batches compiled the graphs a run needs (with and without gradients, a
    # batch of one): a batch of another length reuses them
    trainer = runs[True][0]
    graphs = _compiled_frames()
    with torch._dynamo.config.patch(error_on_recompile=True):  # a new length must not recompile
        trainer.train_step(later)
    prompt = torch.tensor([batches[0][0].student.ids[:8]])
    with torch.no_grad():
        trainer.model.eval()
        trainer.model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert _compiled_frames() == graphs, "generation should run the plain module"
