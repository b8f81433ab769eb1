"""transformers ``generate`` as an engine: batched, left-padded, sampling.

μ, the behaviour log-prob an actor reports for each sampled token, is read from the
distribution the token was actually drawn from: the logits after the sampling transforms
(divided by the temperature, then restricted to the top-p nucleus and renormalised).
So with temperature T and top-p p, μ(y_t) = log softmax(z_t / T)[y_t] renormalised over
the nucleus — not the model's raw distribution. The learner's importance ratio π_θold/μ
therefore also absorbs the temperature and nucleus truncation; set T = 1 and p = 1 for μ
to be the policy's own probability.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from core.engines.base import Completion, Engine, SamplingSettings
from services.weights.client import load_into_model


class HFEngine(Engine):
    def __init__(self, model, tokenizer) -> None:
        """Wraps a loaded model (the learner's held-out evaluation shares its own)."""
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.stop_ids = _stop_ids(model.generation_config.eos_token_id, tokenizer.eos_token_id)

    @classmethod
    def from_pretrained(cls, model_path: str, *, dtype: str = "float32", device: str | None = None,
                        trust_remote_code: bool = False) -> HFEngine:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = None if dtype == "auto" else getattr(torch, dtype)
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch_dtype, trust_remote_code=trust_remote_code).to(device).eval()
        return cls(model, tokenizer)

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def load_weights(self, tensors: Mapping[str, torch.Tensor], version: int) -> None:
        load_into_model(self.model, tensors)
        self.version = version

    def _batch(self, prompts: Sequence[Sequence[int]], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [list(p) for p in prompts for _ in range(n)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: every row's last prompt token is aligned
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        return ids.to(self.device), mask.to(self.device)

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingSettings,
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        if seeds is None:
            return self._generate(prompts, sampling)
        # torch's sampler draws every row of a batch from one generator, so a prompt's
        # samples would depend on what it is batched with: one call per seeded prompt
        devices = [self.device] if self.device.type == "cuda" else []
        out: list[list[Completion]] = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                out += self._generate([prompt], sampling)
        return out

    @torch.no_grad()
    def _generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingSettings) -> list[list[Completion]]:
        ids, mask = self._batch(prompts, sampling.n)
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, temperature=sampling.temperature,
            top_p=sampling.top_p, top_k=0, max_new_tokens=sampling.max_tokens,
            pad_token_id=self.pad_id, eos_token_id=sorted(self.stop_ids),
            return_dict_in_generate=True, output_scores=True,
        )
        new = out.sequences[:, ids.shape[1]:]
        # scores[t]: the processed logits the token at step t was sampled from
        steps = torch.stack(out.scores, dim=1).float()  # [rows, T, V]
        picked = torch.gather(steps, -1, new.unsqueeze(-1)).squeeze(-1)
        logprobs = (picked - torch.logsumexp(steps, dim=-1)).cpu()
        new = new.cpu()
        completions = [self._completion(new[i].tolist(), logprobs[i].tolist()) for i in range(new.shape[0])]
        return [completions[k * sampling.n : (k + 1) * sampling.n] for k in range(len(prompts))]

    def _completion(self, tokens: list[int], logprobs: list[float]) -> Completion:
        for t, tok in enumerate(tokens):
            if tok in self.stop_ids:
                ids = tokens[: t + 1]
                return Completion(ids, logprobs[: t + 1], "stop", self._text(ids))
        return Completion(tokens, logprobs, "length", self._text(tokens))

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _stop_ids(*candidates) -> set[int]:
    out: set[int] = set()
    for c in candidates:
        if isinstance(c, int):
            out.add(c)
        elif c:
            out.update(int(x) for x in c)
    return out
