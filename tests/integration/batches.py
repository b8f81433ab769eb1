"""Real batches for learner tests: arithmetic solutions and corrupted ones, with the
behaviour log-probs μ the model itself gives them."""

from __future__ import annotations

import random

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.prompts import render_prompt_ids
from core.records import Revision, RolloutGroup, Sample
from core.tasks.arith import ArithTask
from core.views import student_input
from learner.curricula.arith import corrupt
from learner.logprobs import score_responses
from learner.replay import TaggedGroup
from methods.peers import assign_peers
from methods.srt import srt_input


def real_groups(model_dir, n_groups: int, run: str = "t", seed: int = 0) -> list[RolloutGroup]:
    """Groups of real solutions and corrupted ones, with μ from the model itself."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rng = random.Random(seed)
    problems = ArithTask().problems("train", seed=seed)
    out = []
    for g in range(n_groups):
        p = next(problems)
        prompt_ids = render_prompt_ids(tok, p.prompt)
        texts = [p.reference, corrupt(p.reference, rng), corrupt(p.reference, rng), p.reference]
        samples = []
        for text in texts:
            y = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
            ok = text == p.reference
            # srt's reviser continuation: right after a wrong attempt, wrong after a right one
            revised = corrupt(p.reference, rng) if ok else p.reference
            r = tok.encode(revised, add_special_tokens=False) + [tok.eos_token_id]
            with torch.no_grad():
                mu, _, _ = score_responses(model, [student_input(prompt_ids, y),
                                                   srt_input(tok, p.prompt, y, ok, r)], tok.pad_token_id)
            revision = Revision(np.asarray(r, np.int32), mu[1, : len(r)].numpy().astype(np.float32),
                                float(not ok), not ok, revised)
            samples.append(Sample(np.asarray(y, np.int32), mu[0, : len(y)].numpy().astype(np.float32), float(ok),
                                  ok, "stop", text, revision))
        out.append(RolloutGroup(run=run, group_id=f"{seed}-{g:03d}", prompt_id=p.prompt_id, task="arith",
                                actor="test", created=0.0, policy_version=0, prompt=p.prompt,
                                prompt_ids=np.asarray(prompt_ids, np.int32), answer=p.answer,
                                samples=tuple(samples)))
    return out


def tagged(groups) -> list[TaggedGroup]:
    return [TaggedGroup(b"0-0", g, assign_peers([s.success for s in g.samples], [len(s.ids) for s in g.samples],
                                                has_answer=True, rng=random.Random(0))) for g in groups]
