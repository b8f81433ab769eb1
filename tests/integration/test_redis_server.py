"""The embedded server's durability and the client's behaviour across restarts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis

from core.codec import decode_group
from core.config import masked_url
from services.transport.redis_client import RedisUnavailable, connect
from services.transport.redis_server import EmbeddedRedis, ensure_redis
from services.transport.streams import ROLLOUT_FIELD, Keys, publish_group
from tests.unit.core.records_factory import make_group


def test_kill_9_and_restart_on_the_same_data_dir_loses_no_acknowledged_group(tmp_path):
    server = EmbeddedRedis(tmp_path).start()
    keys = Keys("durable")
    client = connect(server.url, retry_seconds=10)
    ids = [publish_group(client, keys, make_group(run="durable", group_id=f"{i:04x}")) for i in range(200)]
    server.kill()  # SIGKILL right after the last acknowledged XADD
    assert server.process.returncode == -signal.SIGKILL
    server.start()
    entries = client.xrange(keys.rollouts)
    assert [e for e, _ in entries] == ids
    assert [decode_group(f[ROLLOUT_FIELD]).group_id for _, f in entries] == [f"{i:04x}" for i in range(200)]
    server.stop()
    assert server.process.poll() is not None


def test_a_client_keeps_working_across_a_redis_restart(tmp_path):
    server = EmbeddedRedis(tmp_path).start()
    client = connect(server.url, retry_seconds=20)
    client.set("k", "v1")
    server.stop()
    errors: list[BaseException] = []

    def during_outage():  # issued while Redis is down; retried until it is back
        try:
            client.set("k2", "during-outage")
        except BaseException as err:  # asserted below
            errors.append(err)

    writer = threading.Thread(target=during_outage)
    writer.start()
    time.sleep(1.0)
    assert writer.is_alive()  # still retrying
    server.start()  # from this (long-lived) thread
    try:
        writer.join(timeout=20)
        assert not errors and not writer.is_alive()
        assert client.get("k") == b"v1" and client.get("k2") == b"during-outage"
    finally:
        server.stop()


def test_the_client_gives_up_after_its_window_naming_the_url(tmp_path):
    server = EmbeddedRedis(tmp_path, password="s3cret").start()
    url = server.url
    server.stop()
    client = connect(url, retry_seconds=0.5)
    with pytest.raises(RedisUnavailable) as info:
        client.ping()
    assert f"127.0.0.1:{server.port}" in str(info.value)
    assert "s3cret" not in str(info.value) and "***" in str(info.value)


def test_password_url_and_configured_url_start_nothing(tmp_path):
    with EmbeddedRedis(tmp_path, password="pw") as server:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port).ping()
        url, started = ensure_redis(server.url, tmp_path / "unused")
        assert started is None and url == server.url
        assert connect(url).ping()
        assert not (tmp_path / "unused").exists()
    assert masked_url("rediss://user:pw@h:6380/0") == "rediss://user:***@h:6380/0"
    assert masked_url("redis://:pw@h/0") == "redis://:***@h/0" and masked_url("redis://h:1/0") == "redis://h:1/0"


def test_hsd_redis_command_starts_serves_and_stops_by_signal(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.apps.cli", "redis", "--set", f'redis.data_dir="{tmp_path}"'],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline()
        m = re.match(r"redis (redis://\S+) pid (\d+)", line)
        assert m, line
        url, pid = m.group(1), int(m.group(2))
        assert redis.Redis.from_url(url).ping()
        assert (tmp_path / "appendonly.aof").exists() or (tmp_path / "appendonlydir").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        assert not _alive(pid)
    finally:
        if proc.poll() is None:
            proc.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
