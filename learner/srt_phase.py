"""SD-Zero's phase 1, self-revision training (SRT), offline and in the reference's order
(princeton-pli/Self-Distillation-Zero: ``self_critique_pipeline.py`` collects,
``prepare_data.py`` splits, ``sft.sh`` trains stage 1 then stage 2; ``hsd srt``)::

    collect   train problems, ``attempts`` each (T = 1, top-p 0.9) → for every wrong attempt
              (every attempt with ``revise_correct``) ``revisions`` samples from the reviser
              context x ++ y_init ++ P_r, each verified ──► D_revision: the verified
              revisions, deduplicated on (x, y_init, y_rev), until ``target`` of them
    split     stage 2 a quota of ``stage2_size`` tuples (right-attempt ones first: stage 1
              cannot use them), stage 1 every remaining wrong-attempt tuple: disjoint sets
    stage 1   generation loss, x → y_init ++ P_r ++ y_rev, ``epochs`` over its set
    stage 2   revision loss, x ++ y_init ++ P_r → y_rev, from stage 1's weights, ``epochs``

Each stage: AdamW (β = 0.9, 0.95; weight decay 1e-4), a linear warmup over the first 5%
of its steps then a cosine decay to 0, batches drawn without replacement each epoch; the
reference's defaults (6,000 revisions, a 1,000-tuple stage 2, 3 attempts × 3 revisions, 3
epochs a stage) are this module's.

Departures, and why:

- the learning rate: the reference trains a 4B model at 5e-6 with 4 sequences a step; the
  5M-parameter tiny model is trained at 1e-4 (``srt_lr`` of the online phase, where 3e-4
  lowered both the student and the reviser) with 32 a step;
- stage 2's context continues the assistant turn (:func:`methods.srt.srt_input`), as the
  reference's phase 2 teacher reads it (chat(x) ++ y ++ P_r ++ y), where the reference's
  stage 2 puts x ++ y_init ++ P_r in the user turn: here the revision the reviser learns
  and the one its phase 2 teacher scores share one context;
- no response cleaning (the reference trims repeated tails and strips "You're right"
  openings of an LLM's revisions): the tiny model writes chains, and both are no-ops.

The online ``srt`` method (``methods/srt.py``) trains both stages in one update on each
step's accepted revisions, as a service run does; this is the reference's procedure.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.engines.base import SamplingSettings
from core.engines.hf import HFEngine
from core.prompts import render_prompt_ids
from core.tasks import make_task
from core.tasks.base import Task
from learner.curricula import Example
from learner.gates import ATTEMPT_TOKENS
from learner.lr_schedule import lr_factor
from learner.warm_start import supervised_step
from methods.sdzero import reviser_context
from methods.srt import srt_generation_input, srt_input

log = logging.getLogger(__name__)
PROBLEMS_PER_CALL = 64


@dataclass(frozen=True)
class RevisionTuple:
    prompt: str
    attempt: tuple[int, ...]
    attempt_success: bool
    revision: tuple[int, ...]


@dataclass
class Collected:
    revisions: list[RevisionTuple]  # verified, deduplicated
    problems: int = 0
    attempts: int = 0  # samples generated: attempts, and revisions below
    attempts_failed: int = 0
    revisions_sampled: int = 0
    revisions_verified: int = 0  # before deduplication

    @property
    def samples(self) -> int:
        """Every sample the phase generated: what SD-Zero's budget counts of it."""
        return self.attempts + self.revisions_sampled


def collect(engine: HFEngine, task: Task, target: int, *, attempts: int = 3, revisions: int = 3,
            revise_correct: bool = False, seed: int = 0, max_tokens: int = ATTEMPT_TOKENS,
            top_p: float = 0.9, max_problems: int = 200_000) -> Collected:
    """D_revision: verified revisions of the model's own attempts at train problems, until
    ``target`` distinct ones (or ``max_problems`` problems, when the model rarely revises
    right)."""
    tok = engine.tokenizer
    torch.manual_seed(seed)
    stream = task.problems("train", seed=seed)
    out, seen = Collected([]), set()
    while len(out.revisions) < target and out.problems < max_problems:
        problems = [next(stream) for _ in range(PROBLEMS_PER_CALL)]
        out.problems += len(problems)
        groups = engine.generate([render_prompt_ids(tok, p.prompt) for p in problems],
                                 SamplingSettings(n=attempts, max_tokens=max_tokens, top_p=top_p))
        pending = []
        for p, group in zip(problems, groups, strict=True):
            for c in group:
                ok = task.score(c.text, p).success
                out.attempts += 1
                out.attempts_failed += not ok
                if revise_correct or not ok:
                    pending.append((p, c.ids, ok))
        if not pending:
            continue
        revised = engine.generate([reviser_context(tok, p.prompt, y, ok) for p, y, ok in pending],
                                  SamplingSettings(n=revisions, max_tokens=max_tokens, top_p=top_p))
        for (p, y, ok), group in zip(pending, revised, strict=True):
            for r in group:
                out.revisions_sampled += 1
                if not r.ids or not task.score(r.text, p).success:
                    continue
                out.revisions_verified += 1
                entry = RevisionTuple(p.prompt, tuple(y), ok, tuple(r.ids))
                if (entry.prompt, entry.attempt, entry.revision) not in seen:
                    seen.add((entry.prompt, entry.attempt, entry.revision))
                    out.revisions.append(entry)
    del out.revisions[target:]
    return out


def split_stages(revisions: Sequence[RevisionTuple], stage2_size: int,
                 seed: int = 0) -> tuple[list[RevisionTuple], list[RevisionTuple]]:
    """(stage 1, stage 2), disjoint: stage 2 takes up to ``stage2_size`` tuples, those of
    right attempts first (stage 1, a mistake-and-revision stream, cannot use them), then
    wrong ones; stage 1 every remaining wrong-attempt tuple."""
    rng = random.Random(seed)
    wrong = [r for r in revisions if not r.attempt_success]
    right = [r for r in revisions if r.attempt_success]
    rng.shuffle(wrong)
    rng.shuffle(right)
    from_right = min(len(right), stage2_size)
    from_wrong = min(len(wrong), stage2_size - from_right)
    stage2 = right[:from_right] + wrong[:from_wrong]
    rng.shuffle(stage2)
    stage1 = wrong[from_wrong:]
    if not stage1 or not stage2:
        raise ValueError(f"an empty SRT stage: {len(wrong)} wrong-attempt and {len(right)} right-attempt revisions "
                         f"for a stage 2 of {stage2_size}; collect more (target) or lower stage2_size")
    return stage1, stage2


def warmup_cosine(total_steps: int, warmup_ratio: float = 0.05):
    """The lr factor at each step: linear from 0 over the first ``warmup_ratio`` of the
    steps, then a cosine decay to 0 (the reference's ``lr_scheduler_type = cosine`` with
    ``warmup_ratio``)."""
    warmup = max(1, math.ceil(total_steps * warmup_ratio))
    return lambda step: lr_factor(step, "cosine", warmup, total_steps)


@dataclass
class StageLog:
    examples: int
    steps: int
    losses: list[float] = field(default_factory=list)


def train_stage(model: Any, pad_id: int, examples: Sequence[Example], *, epochs: int, lr: float, batch: int,
                seed: int) -> StageLog:
    rng = random.Random(seed)
    per_epoch = math.ceil(len(examples) / batch)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, warmup_cosine(per_epoch * epochs))
    stage = StageLog(len(examples), per_epoch * epochs)
    order = list(range(len(examples)))
    for _ in range(epochs):
        rng.shuffle(order)
        for i in range(0, len(order), batch):
            stage.losses.append(supervised_step(model, pad_id, optimiser, [examples[k] for k in order[i:i + batch]]))
            schedule.step()
    return stage


def srt_phase(model_in: str, out: str | Path, task_name: str, *, target: int = 6000, stage2_size: int = 1000,
              attempts: int = 3, revisions: int = 3, revise_correct: bool = False, epochs: int = 3,
              lr: float = 1e-4, batch: int = 32, seed: int = 0) -> dict[str, Any]:
    """Collect D_revision with ``model_in``, train stage 1 then stage 2 on disjoint sets, and
    write the SRT model (a Hugging Face folder) and ``srt.json`` (sizes, samples, losses)
    to ``out``."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    started = time.monotonic()
    task = make_task(task_name)
    engine = HFEngine.from_pretrained(model_in)
    tok = engine.tokenizer
    data = collect(engine, task, target, attempts=attempts, revisions=revisions, revise_correct=revise_correct,
                   seed=seed)
    stage1, stage2 = split_stages(data.revisions, stage2_size, seed)
    log.info("D_revision: %d verified revisions from %d problems (%d samples); stage 1 %d, stage 2 %d",
             len(data.revisions), data.problems, data.samples, len(stage1), len(stage2))
    model = engine.model
    first = train_stage(model, tok.pad_token_id, [Example(srt_generation_input(
        tok, r.prompt, r.attempt, r.attempt_success, r.revision)) for r in stage1],
        epochs=epochs, lr=lr, batch=batch, seed=seed)
    second = train_stage(model, tok.pad_token_id, [Example(srt_input(
        tok, r.prompt, r.attempt, r.attempt_success, r.revision)) for r in stage2],
        epochs=epochs, lr=lr, batch=batch, seed=seed + 1)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    report = {
        "model_in": str(model_in), "task": task_name, "target": target, "stage2_size": stage2_size,
        "attempts": attempts, "revisions": revisions, "revise_correct": revise_correct, "epochs": epochs, "lr": lr,
        "batch": batch, "seed": seed,
        "collected": {k: v for k, v in asdict(data).items() if k != "revisions"} | {
            "distinct_revisions": len(data.revisions), "samples": data.samples},
        "stage1": _stage_report(first), "stage2": _stage_report(second),
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    (out / "srt.json").write_text(json.dumps(report, indent=2))
    return report


def _stage_report(stage: StageLog) -> dict[str, Any]:
    return {"examples": stage.examples, "steps": stage.steps,
            "loss_first": stage.losses[0] if stage.losses else None,
            "loss_last": stage.losses[-1] if stage.losses else None}
