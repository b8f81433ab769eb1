"""Waiting in tests: every wait has a deadline and says what it waited for."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout_s: float, what: str | Callable[[], str],
               interval_s: float = 0.05) -> T:
    """``condition()`` once it is truthy; AssertionError naming ``what`` after ``timeout_s``.
    ``what`` may be a callable (e.g. reading a log) evaluated only on failure."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            message = what() if callable(what) else what
            raise AssertionError(f"not within {timeout_s:.0f} s: {message}")
        time.sleep(interval_s)
