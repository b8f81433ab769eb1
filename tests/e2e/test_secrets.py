"""A Redis password given to `hsd run` reaches its processes through the environment and
files only they can read: not their command lines (ps), not the logs, not what is printed,
and endpoints.json is mode 0600."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from services.transport.redis_server import EmbeddedRedis
from tests.waiting import wait_until

SECRET = "s3cret-pw"


def _pids(endpoints: Path) -> dict[str, int] | None:
    try:
        return json.loads(endpoints.read_text())["pids"]
    except (OSError, ValueError):  # not written yet, or half written
        return None


@pytest.mark.slow
def test_a_redis_password_stays_out_of_command_lines_logs_and_output(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    with EmbeddedRedis(tmp_path / "redis", password=SECRET) as redis:
        url = f"redis://:{SECRET}@127.0.0.1:{redis.port}/0"
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.apps.cli", "run", "--run-dir", str(run_dir), "--actors", "1",
             "--steps", "2", "--set", f'redis.url="{url}"', "--set", f'model.path="{tiny_model_dir}"',
             "--set", "learner.batch_groups=2", "--set", "actor.group_size=4", "--set", "learner.eval_every=0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        endpoints = run_dir / "endpoints.json"
        pids = wait_until(lambda: _pids(endpoints), 180, lambda: f"no endpoints.json; hsd run: {proc.poll()}")
        command_lines = {name: Path(f"/proc/{pid}/cmdline").read_bytes() for name, pid in pids.items()}
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert all(SECRET.encode() not in line for line in command_lines.values()), command_lines
    assert stat.S_IMODE(endpoints.stat().st_mode) == 0o600
    assert stat.S_IMODE((run_dir / "config.toml").stat().st_mode) == 0o600
    assert SECRET not in out + err
    for log in run_dir.glob("*.log"):
        assert SECRET not in log.read_text(), log.name
    assert SECRET not in (run_dir / "summary.json").read_text()
    assert "redis://:***@" in (run_dir / "learner.log").read_text()  # the resolved configuration, masked
