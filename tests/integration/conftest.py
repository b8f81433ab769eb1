"""A real Redis server for the integration tests, on a free port, stopped by PID."""

from __future__ import annotations

import pytest

from services.transport.redis_client import connect
from services.transport.redis_server import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def client(redis_server):
    c = connect(redis_server.url, retry_seconds=5)
    yield c
    c.close()
