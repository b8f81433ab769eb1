"""Learner: on one batch (B=4 groups × G=8 samples, a 5M-parameter Qwen3 on CPU)

- HSD step time / GRPO step time: the teacher's overhead (goal ≤ 1.5);
- GRPO step tokens/s against a bare forward + backward + AdamW step over the same
  student sequences (goal ≥ 0.8);
- ``--full``: GRPO and HSD step time with ``learner.compile`` against the eager learner
  (goal ≤ 1.0), and both figures above for a smaller and a larger model.
"""

from __future__ import annotations

import itertools
import random
import tempfile
import time
import uuid

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.common import Figure, Scale, interleaved
from core.config import load_config
from core.prompts import render_prompt_ids
from core.records import RolloutGroup, Sample
from core.tasks.arith import ArithTask
from learner.batch import build_samples
from learner.logprobs import dense_response_logits, token_logprobs
from learner.replay import TaggedGroup
from learner.tiny_model import build_tiny_model
from learner.trainer import TorchTrainer
from methods import make_method
from methods.peers import assign_peers

SIZES = {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4}
SCALING = {  # --full: how the figures move with model size
    "0.6M": {},  # the embedded default's tiny model
    "19M": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 6, "num_attention_heads": 8,
            "num_key_value_heads": 4},
}


def make_batch(tokenizer, groups: int, g: int, length: int, seed: int = 0) -> list[TaggedGroup]:
    rng = np.random.default_rng(seed)
    text_ids = [i for i in range(len(tokenizer)) if i not in tokenizer.all_special_ids]
    out = []
    for p in itertools.islice(ArithTask().problems(), groups):
        samples = []
        for k in range(g):
            ids = rng.choice(text_ids, length).astype(np.int32)
            samples.append(Sample(ids, -rng.exponential(1.0, length).astype(np.float32), float(k % 3 == 0),
                                  k % 3 == 0, "length", tokenizer.decode(ids.tolist())))
        group = RolloutGroup("bench", uuid.uuid4().hex, p.prompt_id, "arith", "bench", 0.0, 0, p.prompt,
                             np.asarray(render_prompt_ids(tokenizer, p.prompt), np.int32), p.answer, tuple(samples))
        tags = assign_peers([s.success for s in samples], [length] * g, has_answer=True, rng=random.Random(seed))
        out.append(TaggedGroup(b"0-0", group, tags))
    return out


def _trainer(path, tokenizer, batch, method: str, compiled: bool = False):
    """(trainer, its samples of ``batch``) for ``method`` on the model at ``path``."""
    config = load_config(environ={}, overrides=[f'algorithm.method="{method}"', "learner.lr=1e-6",
                                                "learner.microbatch_tokens=100000",
                                                f"learner.compile={str(compiled).lower()}"])
    trainer = TorchTrainer(AutoModelForCausalLM.from_pretrained(path), config, tokenizer.pad_token_id)
    return trainer, build_samples(batch, tokenizer, make_method(config.algorithm))


def _steps_per_s(trainer, samples) -> float:
    t = time.perf_counter()
    trainer.train_step(samples)
    return 1.0 / (time.perf_counter() - t)


def measure(sizes: dict[str, int], length: int, repeats: int) -> tuple[tuple[float, float], tuple[float, float], int]:
    """(HSD, GRPO) steps/s and (GRPO, bare) tokens/s on one batch for a model of ``sizes``."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(tmp, seed=0, **sizes)
        tokenizer = AutoTokenizer.from_pretrained(path)
        batch = make_batch(tokenizer, 4, 8, length)
        trainers, samples = {}, {}
        for method in ("grpo", "hsd"):
            trainers[method], samples[method] = _trainer(path, tokenizer, batch, method)
        tokens = sum(s.length for s in samples["grpo"])
        params = sum(p.numel() for p in trainers["grpo"].model.parameters())

        def step(method: str) -> float:
            return _steps_per_s(trainers[method], samples[method])

        bare_model = AutoModelForCausalLM.from_pretrained(path)
        bare_opt = torch.optim.AdamW(bare_model.parameters(), lr=1e-6)
        inputs = [s.student for s in samples["grpo"]]

        def bare() -> float:
            t = time.perf_counter()
            logits, resp_ids, mask = dense_response_logits(bare_model, inputs, tokenizer.pad_token_id)
            loss = -(token_logprobs(logits, resp_ids) * mask).sum() / mask.sum()
            bare_opt.zero_grad()
            loss.backward()
            bare_opt.step()
            return tokens / (time.perf_counter() - t)

        for m in trainers:  # warm-up
            step(m)
        steps = interleaved(lambda: step("hsd"), lambda: step("grpo"), repeats)
        rates = interleaved(lambda: step("grpo") * tokens, bare, repeats)
    return steps, rates, params


def measure_compiled(method: str, length: int, repeats: int) -> tuple[float, float]:
    """(compiled, eager) steps/s of ``method`` on one batch (``learner.compile``); the
    compilation happens in the warm-up steps."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(tmp, seed=0, **SIZES)
        tokenizer = AutoTokenizer.from_pretrained(path)
        batch = make_batch(tokenizer, 4, 8, length)
        compiled = _trainer(path, tokenizer, batch, method, compiled=True)
        eager = _trainer(path, tokenizer, batch, method)
        for _ in range(2):  # warm-up: the first steps compile (with and without gradients)
            _steps_per_s(*compiled)
            _steps_per_s(*eager)
        return interleaved(lambda: _steps_per_s(*compiled), lambda: _steps_per_s(*eager), repeats)


def run(scale: Scale = Scale.QUICK) -> list[Figure]:
    length = {Scale.SMOKE: 16, Scale.QUICK: 64, Scale.FULL: 256}[scale]
    (hsd, grpo), (ours, baseline), params = measure(SIZES, length, 1 if scale is Scale.SMOKE else 5)
    figures = [
        Figure("learner_hsd_vs_grpo_step_time", 1 / hsd, 1 / grpo, "<= 1.5", "s/step",
               f"B=4 x G=8 x {length} tokens, {params / 1e6:.0f}M-param Qwen3, CPU"),
        Figure("learner_grpo_tokens_per_s", ours, baseline, ">= 0.8", "tokens/s",
               "vs bare forward+backward+AdamW of the same sequences"),
    ]
    if scale is Scale.FULL:  # learner.compile against the eager learner, and scaling
        for method in ("grpo", "hsd"):
            fast, eager = measure_compiled(method, length, 5)
            figures.append(Figure(f"learner_{method}_compiled_vs_eager_step_time", 1 / fast, 1 / eager, "<= 1.0",
                                  "s/step", f"learner.compile, B=4 x G=8 x {length} tokens, CPU"))
        # the same figures for a smaller and a larger model (64-token responses)
        for label, sizes in SCALING.items():
            (hsd, grpo), (ours, baseline), params = measure(sizes, 64, 5)
            figures += [
                Figure(f"learner_hsd_vs_grpo_step_time_{label}", 1 / hsd, 1 / grpo, "<= 1.5", "s/step",
                       f"{params / 1e6:.1f}M params, B=4 x G=8 x 64 tokens"),
                Figure(f"learner_grpo_tokens_per_s_{label}", ours, baseline, ">= 0.8", "tokens/s",
                       f"{params / 1e6:.1f}M params"),
            ]
    return figures


if __name__ == "__main__":
    from bench.common import table

    print(table(run()))
