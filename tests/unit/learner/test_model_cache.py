"""A second process that needs the cached tiny-arith model while another builds it says
that it waits, and for what, instead of blocking in silence; a hub id resolves to one local
folder, or fails in one line."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from core.engines.vllm import checkpoint_shapes
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


def _resolve_in_a_process(model: str, hf_home) -> subprocess.CompletedProcess:
    """huggingface_hub reads HF_HOME when it is imported: a process of its own, as a run's."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", "import sys; from learner.tiny_model import resolve_model; "
                           "print(resolve_model(sys.argv[1]))", model], capture_output=True, text=True, env=env,
                          timeout=120)


def test_a_hub_id_resolves_to_its_snapshot_in_the_cache_and_every_process_reads_that_folder(tmp_path,
                                                                                          tiny_model_dir):
    snapshot = tmp_path / "hub" / "models--someone--tiny-model" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_model_dir, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0123abcd")
    out = _resolve_in_a_process("someone/tiny-model", tmp_path)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == snapshot
    assert checkpoint_shapes(out.stdout.strip())  # what the vLLM engine reads: a folder, not an id


def test_a_hub_id_out_of_reach_is_one_line_naming_the_field(tmp_path):
    out = _resolve_in_a_process("someone/not-cached", tmp_path)
    assert out.returncode == 1
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("services.errors.StartupError: model.path: 'someone/not-cached' is no local folder "
                           "and cannot be fetched from the hub here"), line
