"""`hsd run` killed with -9 mid-run (launcher, learner and actors at once) and continued with
`hsd run --resume RUN_DIR`: the run reaches its step count, no committed group is trained
twice, and generated = trained + dropped + in flight holds over both runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from services.transport.streams import Keys
from tests.waiting import wait_until

STEPS, B = 8, 2


def _endpoints(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "endpoints.json").read_text())
    except (OSError, ValueError):
        return None


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.mark.slow
def test_a_run_killed_with_minus_9_resumes_to_completion(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "services.apps.cli", "run", "--steps", str(STEPS), "--actors", "1",
         "--run-dir", str(run_dir), "--set", f'model.path="{tiny_model_dir}"', "--set", "actor.group_size=4",
         "--set", "model.max_response_tokens=16", "--set", f"learner.batch_groups={B}",
         "--set", "learner.checkpoint_every=2", "--set", "learner.eval_every=0", "--set", "learner.lr=1e-3",
         "--set", "redis.claim_timeout_s=2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoints = wait_until(lambda: _endpoints(run_dir) or first.poll(), 240, "the first run never came up")
    assert isinstance(endpoints, dict), f"the first run exited with {first.returncode}"
    client = redis.Redis.from_url(endpoints["redis"])
    state = Keys(endpoints["run"]).state
    # past the checkpoint at step 2: step 3's groups are trained but not yet committed
    wait_until(lambda: int(client.hget(state, "version") or 0) >= 3, 240, "the first run made no third step")
    for pid in [first.pid, *endpoints["pids"].values()]:
        os.kill(pid, signal.SIGKILL)
    first.wait(timeout=30)
    wait_until(lambda: not _answers(endpoints["redis"]), 60, "the first run's Redis did not stop with it")

    resumed = subprocess.run([sys.executable, "-m", "services.apps.cli", "run", "--resume", str(run_dir),
                              "--actors", "1"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == STEPS
    g = summary["groups"]
    assert g["trained"] == STEPS * B  # committed once each, over both runs
    assert g["generated"] == g["trained"] + sum(g["dropped"].values()) + g["in_flight_at_exit"], g
    assert "resumed from" in (run_dir / "learner.log").read_text()
