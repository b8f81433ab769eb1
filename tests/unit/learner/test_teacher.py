from __future__ import annotations

import pytest
import torch
from torch import nn

from learner.teacher import make_teacher_policy


def _student(value: float = 1.0) -> nn.Module:
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(value)
    return m


def _set(m: nn.Module, value: float) -> None:
    with torch.no_grad():
        m.weight.fill_(value)


def _w(m: nn.Module) -> float:
    return m.weight.item()


def test_current_is_the_student_itself():
    student = _student()
    policy = make_teacher_policy("current", student)
    assert policy.module(student) is student
    _set(student, 5.0)
    policy.after_step(student)
    assert _w(policy.module(student)) == 5.0


def test_frozen_keeps_the_initial_weights_and_takes_no_grad():
    student = _student(1.0)
    policy = make_teacher_policy("frozen", student)
    teacher = policy.module(student)
    assert teacher is not student
    assert not any(p.requires_grad for p in teacher.parameters())
    for v in (2.0, 3.0, 4.0):
        _set(student, v)
        policy.after_step(student)
    assert _w(policy.module(student)) == 1.0


def test_sync_copies_every_k_steps():
    student = _student(0.0)
    policy = make_teacher_policy("sync", student, sync_every=3)
    seen = []
    for step in range(1, 8):
        _set(student, float(step))
        policy.after_step(student)
        seen.append(_w(policy.module(student)))
    assert seen == [0.0, 0.0, 3.0, 3.0, 3.0, 6.0, 6.0]


def test_ema_follows_its_recurrence():
    student = _student(0.0)
    policy = make_teacher_policy("ema", student, ema_decay=0.9)
    expected = 0.0
    for step in range(1, 5):
        _set(student, 10.0 * step)
        policy.after_step(student)
        expected = 0.9 * expected + 0.1 * 10.0 * step
        assert _w(policy.module(student)) == pytest.approx(expected, rel=1e-6)


def test_state_round_trip_and_mismatch():
    student = _student(1.0)
    policy = make_teacher_policy("ema", student, ema_decay=0.5)
    _set(student, 3.0)
    policy.after_step(student)
    state = policy.state_dict()
    fresh = make_teacher_policy("ema", _student(9.0), ema_decay=0.5)
    fresh.load_state_dict(state)
    assert fresh.steps == 1 and _w(fresh.module(student)) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="ema"):
        make_teacher_policy("sync", _student()).load_state_dict(state)
    with pytest.raises(ValueError):
        make_teacher_policy("nope", _student())
