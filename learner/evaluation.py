"""Held-out accuracy: whether a run learns, measured on problems it never trains on.

The training reward of a step is a poor learning curve: a step sees a handful of prompts
whose difficulty varies far more than the policy improves between steps. Here the same
fixed problems of the task's test split are decoded the same way each time (the actors'
temperature and top-p, ``samples`` per problem, a fixed seed that leaves the training RNG
untouched), so successive figures differ only by the weights.

Besides the accuracy: the accuracy per path length (problems whose fields carry ``k``),
and, for tasks that mark the tokens of their reference solution that matter
(``Task.reference_spans``: the table chain's intermediate values), the mean teacher-forced
log-probability of those tokens — no sampling, so a low-noise second measure.
"""

from __future__ import annotations

import itertools
import logging
import statistics
from collections import defaultdict
from dataclasses import dataclass

import torch

from core.engines.base import SamplingSettings
from core.engines.hf import HFEngine
from core.prompts import render_prompt_ids
from core.tasks.base import Task
from core.views import student_input
from learner.logprobs import score_responses

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldOutResult:
    accuracy: float  # mean success over problems × samples
    accuracy_by_length: dict[int, float]  # per path length k, where problems have one
    reference_logprob: float | None  # mean log π(marked reference tokens); None: the task marks none


class HeldOutEval:
    def __init__(self, task: Task, model, tokenizer, *, problems: int, sampling: SamplingSettings,
                 seed: int = 0, batch_problems: int = 128) -> None:
        self.task = task
        self.engine = HFEngine(model, tokenizer)
        self.problems = list(itertools.islice(task.problems("test", seed=seed), problems))
        self.prompts = [render_prompt_ids(tokenizer, p.prompt) for p in self.problems]
        self.sampling = sampling
        self.seed = seed
        self.batch_problems = batch_problems
        if not self.problems:
            log.warning("task %s has no test split: held-out evaluation is off", task.name)

    def __bool__(self) -> bool:
        return bool(self.problems)

    def evaluate(self) -> HeldOutResult:
        model = self.engine.model
        was_training = model.training
        model.eval()
        by_length: dict[int, list[bool]] = defaultdict(list)
        outcomes: list[bool] = []
        devices = [self.engine.device] if self.engine.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                for start in range(0, len(self.prompts), self.batch_problems):
                    chunk = slice(start, start + self.batch_problems)
                    groups = self.engine.generate(self.prompts[chunk], self.sampling)
                    for problem, completions in zip(self.problems[chunk], groups, strict=True):
                        scores = [self.task.score(c.text, problem).success for c in completions]
                        outcomes += scores
                        if "k" in problem.fields:
                            by_length[problem.fields["k"]] += scores
            reference = self._reference_logprob()
        finally:
            model.train(was_training)
        return HeldOutResult(statistics.fmean(outcomes),
                             {k: statistics.fmean(v) for k, v in sorted(by_length.items())}, reference)

    @torch.no_grad()
    def _reference_logprob(self) -> float | None:
        tokenizer, picked = self.engine.tokenizer, []
        views, marks = [], []
        for prompt, problem in zip(self.prompts, self.problems, strict=True):
            spans = self.task.reference_spans(problem)
            if not spans:
                continue
            encoded = tokenizer(problem.reference, add_special_tokens=False, return_offsets_mapping=True)
            views.append(student_input(prompt, encoded["input_ids"]))
            marks.append([any(a < hi and lo < b for lo, hi in spans) for a, b in encoded["offset_mapping"]])
        for start in range(0, len(views), self.batch_problems):
            chunk = views[start:start + self.batch_problems]
            logprobs, _, _ = score_responses(self.engine.model, chunk, self.engine.pad_id)
            for row, mark in enumerate(marks[start:start + self.batch_problems]):
                picked += [float(lp) for lp, m in zip(logprobs[row, : len(mark)].tolist(), mark, strict=True) if m]
        return statistics.fmean(picked) if picked else None
