"""Held-out evaluation: fixed test-split problems, repeatable, and invisible to training."""

from __future__ import annotations

import torch

from core.engines.base import SamplingSettings
from core.tasks.arith import ArithTask, is_test
from learner.evaluation import HeldOutEval


def test_held_out_eval_is_repeatable_and_leaves_training_state_alone(tiny_model, tokenizer):
    evaluation = HeldOutEval(ArithTask(), tiny_model, tokenizer, problems=6,
                             sampling=SamplingSettings(n=2, max_tokens=8), seed=3)
    assert len(evaluation.problems) == 6 and all(is_test(p.prompt_id) for p in evaluation.problems)
    tiny_model.train()
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    first = evaluation.accuracy()
    assert torch.equal(torch.get_rng_state(), rng)  # the training RNG stream is untouched
    assert tiny_model.training  # mode restored
    assert evaluation.accuracy() == first and 0.0 <= first <= 1.0
    tiny_model.eval()


def test_held_out_eval_scores_with_the_tasks_verifier(tiny_model, tokenizer):
    """Decoding is repeatable, so the accuracy is exactly what the verifier says of the
    completions the same seed produces."""
    sampling = SamplingSettings(n=3, max_tokens=8)
    evaluation = HeldOutEval(ArithTask(), tiny_model, tokenizer, problems=4, sampling=sampling, seed=1)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        groups = evaluation.engine.generate(evaluation.prompts, sampling)
    task = ArithTask()
    want = sum(task.score(c.text, p).success for p, g in zip(evaluation.problems, groups, strict=True) for c in g)
    assert evaluation.accuracy() == want / 12
