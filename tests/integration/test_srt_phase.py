"""SD-Zero's phase 1 end to end at a small size: the shipped table-chain model collects
verified revisions of its own attempts, and stage 1 then stage 2 train on disjoint sets."""

from __future__ import annotations

import json

from core.tasks import make_task
from learner.srt_phase import collect, srt_phase


def test_collected_revisions_are_verified_distinct_and_counted(tmp_path):
    from core.engines.hf import HFEngine
    from learner.tiny_model import TINY, resolve_model

    task = make_task("chain")
    engine = HFEngine.from_pretrained(resolve_model(TINY))
    data = collect(engine, task, target=8, seed=3)
    assert len(data.revisions) == 8 == len({(r.prompt, r.attempt, r.revision) for r in data.revisions})
    assert data.attempts == 3 * data.problems and data.revisions_sampled == 3 * data.attempts_failed
    problems = {p.prompt: p for p in (task.problem(r.prompt) for r in data.revisions)}
    for r in data.revisions:
        text = engine.tokenizer.decode(list(r.revision), skip_special_tokens=True)
        assert task.score(text, problems[r.prompt]).success and not r.attempt_success

    out = srt_phase(resolve_model(TINY), tmp_path / "srt", "chain", target=12, stage2_size=4, epochs=1, seed=3)
    written = json.loads((tmp_path / "srt" / "srt.json").read_text())
    assert written == out and out["stage1"]["examples"] == 8 and out["stage2"]["examples"] == 4
    assert out["collected"]["samples"] == out["collected"]["attempts"] + out["collected"]["revisions_sampled"]
    assert (tmp_path / "srt" / "config.json").exists()
