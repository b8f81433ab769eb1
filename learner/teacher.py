"""Which weights the teacher scores with, as an object the learner steps.

| policy  | teacher weights θ_T                                    | memory        |
|---------|--------------------------------------------------------|---------------|
| current | θ_T = θ (the student module itself, no copy)           | none          |
| ema     | θ_T ← d·θ_T + (1−d)·θ after every optimiser step       | one copy      |
| sync    | θ_T ← θ every K optimiser steps (SD-Zero's teacher sync)| one copy      |
| frozen  | θ_T = θ_0, the initial weights, forever                | one copy      |

Lifecycle::

    policy = make_teacher_policy(cfg, student)   # copies θ_0 unless `current`
    loop:  with torch.no_grad(): policy.module(student)(...)   # teacher forward
           optimiser.step(); policy.after_step(student)        # may update θ_T

The copy is an eval-mode module with ``requires_grad=False``; its state is part of a
checkpoint (:meth:`state_dict` / :meth:`load_state_dict`).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn


class TeacherPolicy(ABC):
    name: str

    def __init__(self) -> None:
        self.steps = 0

    @abstractmethod
    def module(self, student: nn.Module) -> nn.Module:
        """The module to run the teacher forward pass with."""

    def after_step(self, student: nn.Module) -> None:
        """Called once after every committed optimiser step."""
        self.steps += 1
        self._update(student)

    def _update(self, student: nn.Module) -> None:  # noqa: B027 - `current` and `frozen` keep θ_T
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["name"] != self.name:
            raise ValueError(f"checkpoint holds a {state['name']!r} teacher, config says {self.name!r}")
        self.steps = int(state["steps"])


class CurrentTeacher(TeacherPolicy):
    name = "current"

    def module(self, student: nn.Module) -> nn.Module:
        return student


class _CopiedTeacher(TeacherPolicy):
    """A teacher that keeps its own frozen copy of the weights."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.copy = copy.deepcopy(student).eval()
        self.copy.requires_grad_(False)

    def module(self, student: nn.Module) -> nn.Module:
        return self.copy

    @torch.no_grad()
    def _copy_from(self, student: nn.Module) -> None:
        for t, s in zip(self.copy.parameters(), student.parameters(), strict=True):
            t.copy_(s)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "weights": self.copy.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.copy.load_state_dict(state["weights"])


class FrozenTeacher(_CopiedTeacher):
    name = "frozen"


class SyncTeacher(_CopiedTeacher):
    name = "sync"

    def __init__(self, student: nn.Module, every: int) -> None:
        super().__init__(student)
        if every < 1:
            raise ValueError("sync every must be >= 1")
        self.every = every

    def _update(self, student: nn.Module) -> None:
        if self.steps % self.every == 0:
            self._copy_from(student)


class EmaTeacher(_CopiedTeacher):
    name = "ema"

    def __init__(self, student: nn.Module, decay: float) -> None:
        super().__init__(student)
        if not 0.0 < decay < 1.0:
            raise ValueError("ema decay must be in (0, 1)")
        self.decay = decay

    @torch.no_grad()
    def _update(self, student: nn.Module) -> None:
        for t, s in zip(self.copy.parameters(), student.parameters(), strict=True):
            t.lerp_(s.to(t.dtype), 1.0 - self.decay)


def make_teacher_policy(
    name: str, student: nn.Module, *, ema_decay: float = 0.99, sync_every: int = 10
) -> TeacherPolicy:
    if name == "current":
        return CurrentTeacher()
    if name == "frozen":
        return FrozenTeacher(student)
    if name == "sync":
        return SyncTeacher(student, sync_every)
    if name == "ema":
        return EmaTeacher(student, ema_decay)
    raise ValueError(f"unknown teacher policy {name!r}")
