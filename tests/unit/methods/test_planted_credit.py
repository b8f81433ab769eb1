"""A planted case on a real model: HSD credit peaks where y leaves its successful peer.

The shipped tiny Qwen3 (tests/fixtures/planted_copy.py) answers "I pick D now." with a
free digit D and, when the HSD context shows a successful peer, picks the peer's digit.
Scoring a response with D=3 against a peer with D=8 then puts nearly all |δ| on the digit,
the divergence. The model is committed rather than trained here, because whether 1,200
steps form the copy skill depends on the machine's floating-point path; its scores differ
between machines by ~1e-6, far inside the margins below (δ at the digit ≈ −7 against −2).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.prompts import render_prompt_ids
from core.views import student_input
from learner.logprobs import score_responses
from methods.credit import credit_profile, token_credit
from methods.hsd import hsd_input
from tests.fixtures.planted_copy import DIRECTORY, PROMPT, answer_ids


def test_hsd_credit_peaks_at_the_divergence_position():
    model = AutoModelForCausalLM.from_pretrained(DIRECTORY).eval()
    tokenizer = AutoTokenizer.from_pretrained(DIRECTORY)
    y, peer = answer_ids(tokenizer, 3), answer_ids(tokenizer, 8)
    with torch.no_grad():
        teacher, _, mask = score_responses(
            model, [hsd_input(tokenizer, PROMPT, y, "I pick 8 now.")], tokenizer.pad_token_id)
        student, _, _ = score_responses(model, [student_input(render_prompt_ids(tokenizer, PROMPT), y)],
                                        tokenizer.pad_token_id)
    delta = token_credit(teacher, student, mask)[0]
    profile = credit_profile(delta, y, peer, window=0, tau=0.1)
    assert profile.divergence == y.index(tokenizer.convert_tokens_to_ids("3"))
    assert profile.peak_offset == 0
    assert delta[profile.divergence] < -2.0  # the teacher rejects the digit the peer did not pick
    assert profile.divergence_mass > 0.8
    assert profile.silence > 0.8
