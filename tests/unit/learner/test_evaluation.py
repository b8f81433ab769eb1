"""Held-out evaluation: fixed test-split problems, repeatable, and invisible to training."""

from __future__ import annotations

import pytest
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
    first = evaluation.evaluate()
    assert torch.equal(torch.get_rng_state(), rng)  # the training RNG stream is untouched
    assert tiny_model.training  # mode restored
    assert evaluation.evaluate() == first
    assert first.accuracy_by_length == {} and first.reference_logprob is None  # arith marks neither
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
    assert evaluation.evaluate().accuracy == want / 12


def test_chain_eval_breaks_accuracy_down_by_length_and_reads_the_reference_values(tiny_model, tokenizer):
    from core.tasks.chain import ChainTask
    from core.views import student_input
    from learner.logprobs import score_responses

    task = ChainTask()
    evaluation = HeldOutEval(task, tiny_model, tokenizer, problems=8, sampling=SamplingSettings(n=2, max_tokens=8),
                             seed=0)
    result = evaluation.evaluate()
    assert set(result.accuracy_by_length) == {p.fields["k"] for p in evaluation.problems}
    # the reference log-prob by hand: the log-prob of each digit after "=" in the reference
    picked = []
    for prompt, p in zip(evaluation.prompts, evaluation.problems, strict=True):
        ids = tokenizer.encode(p.reference, add_special_tokens=False)
        with torch.no_grad():
            lp, _, _ = score_responses(tiny_model, [student_input(prompt, ids)], tokenizer.pad_token_id)
        picked += [float(lp[0, i]) for i, ch in enumerate(p.reference) if i > 0 and p.reference[i - 1] == "="]
    assert len(picked) == sum(p.fields["k"] for p in evaluation.problems)
    assert result.reference_logprob == pytest.approx(sum(picked) / len(picked), abs=1e-5)
