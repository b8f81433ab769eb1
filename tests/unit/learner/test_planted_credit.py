"""A planted case on a real model: HSD credit peaks where y leaves its successful peer.

The tiny Qwen3 is trained to answer "I pick D now." with a free digit D, and — when the
HSD context shows a successful peer — to pick the peer's digit. Scoring a response with
D=3 against a peer with D=8 then puts nearly all |δ| on the digit, the divergence.
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from learner.context import hsd_input, student_input
from learner.credit import credit_profile, token_credit
from learner.logprobs import score_responses
from learner.tiny_model import build_tiny_model
from services.prompts import render_prompt_ids

PROMPT = "Pick a digit."


def _answer(tokenizer, digit: int) -> list[int]:
    return tokenizer.encode(f"I pick {digit} now.", add_special_tokens=False) + [tokenizer.eos_token_id]


@pytest.mark.slow
def test_hsd_credit_peaks_at_the_divergence_position(tmp_path, tokenizer):
    torch.manual_seed(0)
    # 4 heads of 16 learn this copy within a few hundred steps (the serving default, whose
    # heads are 32 wide for vLLM's CPU kernels, takes far longer to form it)
    model = AutoModelForCausalLM.from_pretrained(
        build_tiny_model(tmp_path, seed=0, num_attention_heads=4, num_key_value_heads=2, head_dim=16))
    student_prompt = render_prompt_ids(tokenizer, PROMPT)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rng = random.Random(0)
    for step in range(1200):
        batch = []
        for i in range(16):
            digit = rng.randrange(10)
            batch.append(hsd_input(tokenizer, PROMPT, _answer(tokenizer, digit), f"I pick {digit} now."))
            if i % 4 == 0:
                batch.append(student_input(student_prompt, _answer(tokenizer, rng.randrange(10))))
        logprobs, _, mask = score_responses(model, batch, tokenizer.pad_token_id)
        loss = -(logprobs * mask).sum() / mask.sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        # uniform digits alone leave loss ≈ 0.16; copying the peer brings it under 0.08
        if step >= 200 and loss.item() < 0.07:
            break
    assert loss.item() < 0.07, f"the copy skill did not form in {step + 1} steps"

    model.eval()
    y, peer = _answer(tokenizer, 3), _answer(tokenizer, 8)
    with torch.no_grad():
        teacher, _, mask = score_responses(
            model, [hsd_input(tokenizer, PROMPT, y, "I pick 8 now.")], tokenizer.pad_token_id)
        student, _, _ = score_responses(model, [student_input(student_prompt, y)], tokenizer.pad_token_id)
    delta = token_credit(teacher, student, mask)[0]
    profile = credit_profile(delta, y, peer, window=0, tau=0.1)
    assert profile.divergence == y.index(tokenizer.convert_tokens_to_ids("3"))
    assert profile.peak_offset == 0
    assert delta[profile.divergence] < -2.0  # the teacher rejects the digit the peer did not pick
    assert profile.divergence_mass > 0.8
    assert profile.silence > 0.8
