"""Held-out accuracy: whether a run learns, measured on problems it never trains on.

The training reward of a step is a poor learning curve: a step sees a handful of prompts
whose difficulty varies far more than the policy improves between steps. Here the same
fixed problems of the task's test split are decoded the same way each time (the actors'
temperature and top-p, ``samples`` per problem, a fixed seed that leaves the training RNG
untouched), so successive figures differ only by the weights.
"""

from __future__ import annotations

import itertools
import logging

import torch

from core.engines.base import SamplingSettings
from core.engines.hf import HFEngine
from core.prompts import render_prompt_ids
from core.tasks.base import Task

log = logging.getLogger(__name__)


class HeldOutEval:
    def __init__(self, task: Task, model, tokenizer, *, problems: int, sampling: SamplingSettings,
                 seed: int = 0, batch_problems: int = 32) -> None:
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

    def accuracy(self) -> float:
        """Mean success over problems × samples."""
        model = self.engine.model
        was_training = model.training
        model.eval()
        successes = 0
        devices = [self.engine.device] if self.engine.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                for start in range(0, len(self.prompts), self.batch_problems):
                    chunk = slice(start, start + self.batch_problems)
                    groups = self.engine.generate(self.prompts[chunk], self.sampling)
                    for problem, completions in zip(self.problems[chunk], groups, strict=True):
                        successes += sum(self.task.score(c.text, problem).success for c in completions)
        finally:
            model.train(was_training)
        return successes / (len(self.problems) * self.sampling.n)
