"""A second process that needs the cached tiny-arith model while another builds it says
that it waits, and for what, instead of blocking in silence."""

from __future__ import annotations

import fcntl
import logging
import threading
import time

from learner.tiny_model import TINY_ARITH, TINY_VERSION, resolve_model


def test_a_process_waiting_for_the_model_cache_lock_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HSD_CACHE", str(tmp_path))
    target = tmp_path / "models" / f"tiny-arith-{TINY_VERSION}"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # built already: once the lock is free, it returns
    got: list[str] = []
    with open(target.parent / f".tiny-arith-{TINY_VERSION}.lock", "w") as lock, caplog.at_level(logging.WARNING):
        fcntl.flock(lock, fcntl.LOCK_EX)  # "another process is building it"
        waiter = threading.Thread(target=lambda: got.append(resolve_model(TINY_ARITH)))
        waiter.start()
        deadline = time.monotonic() + 30
        while "waiting for it" not in caplog.text:
            assert time.monotonic() < deadline, "no message while waiting for the cache lock"
            time.sleep(0.05)
        assert str(target) in caplog.text and not got  # it still waits
        fcntl.flock(lock, fcntl.LOCK_UN)
    waiter.join(timeout=30)
    assert got == [str(target)], "resolve_model did not return once the lock was free"
