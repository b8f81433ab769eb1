"""Actor engine: the hf engine's generated tokens/s (with behaviour log-probs and the
completion bookkeeping) against a bare ``model.generate`` loop on the same model, prompts
and sampling settings, interleaved in one run."""

from __future__ import annotations

import itertools
import time

import torch

from bench.common import Figure, Scale, interleaved
from core.engines.base import SamplingSettings
from core.engines.hf import HFEngine
from core.prompts import render_prompt_ids
from core.tasks.arith import ArithTask

# the vllm tier's bench measures the same settings
MAX_TOKENS = {Scale.SMOKE: 16, Scale.QUICK: 64, Scale.FULL: 256}
REPEATS = {Scale.SMOKE: 1, Scale.QUICK: 7, Scale.FULL: 15}


def run(scale: Scale = Scale.QUICK) -> list[Figure]:
    import tempfile

    from learner.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        engine = HFEngine.from_pretrained(str(build_tiny_model(tmp, seed=0)))
        tok = engine.tokenizer
        prompts = [render_prompt_ids(tok, p.prompt) for p in itertools.islice(ArithTask().problems(), 4)]
        sampling = SamplingSettings(n=8, max_tokens=MAX_TOKENS[scale])
        ids, mask = engine._batch(prompts, sampling.n)
        eos = sorted(engine.stop_ids)

        pair = itertools.count()

        def ours() -> float:
            torch.manual_seed(next(pair) // 2)  # both sides of a pair sample the same sequences
            t = time.perf_counter()
            out = engine.generate(prompts, sampling)
            return sum(len(c.ids) for group in out for c in group) / (time.perf_counter() - t)

        def bare() -> float:
            torch.manual_seed(next(pair) // 2)
            t = time.perf_counter()
            with torch.no_grad():
                seq = engine.model.generate(
                    input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                    max_new_tokens=sampling.max_tokens, pad_token_id=engine.pad_id, eos_token_id=eos)
            new = seq[:, ids.shape[1]:]
            # count tokens up to and including the first stop token, as the engine does
            stop = torch.isin(new, torch.tensor(eos))
            first_stop = stop.float().argmax(1) + 1
            lengths = torch.where(stop.any(1), first_stop, torch.full_like(first_stop, new.shape[1]))
            return float(lengths.sum()) / (time.perf_counter() - t)

        value, baseline = interleaved(ours, bare, REPEATS[scale])
    return [Figure("actor_hf_tokens_per_s", value, baseline, ">= 0.9", "tokens/s",
                   "tiny Qwen3, 4 prompts x G=8, sampling T=1")]


if __name__ == "__main__":
    from bench.common import table

    print(table(run()))
