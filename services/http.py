"""The metrics/health endpoint every process serves: ``/metrics`` (Prometheus text) and
``/healthz`` (200 "ok" when the process's readiness check passes, else 503 with why)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from services.errors import StartupError

Readiness = Callable[[], tuple[bool, str]]


class MetricsServer:
    """Lifecycle: start() binds (port 0: a free one) and serves in a daemon thread;
    stop() shuts the listener down."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 registry: CollectorRegistry = REGISTRY, ready: Readiness | None = None) -> None:
        registry_ = registry
        ready_ = ready or (lambda: (True, "ok"))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?")[0] == "/metrics":
                    self._reply(200, generate_latest(registry_), CONTENT_TYPE_LATEST)
                elif self.path.split("?")[0] == "/healthz":
                    ok, why = ready_()
                    self._reply(200 if ok else 503, (why + "\n").encode(), "text/plain")
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # scrapes every few seconds: not worth a log line
                pass

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as err:
            raise StartupError(f"metrics.port: cannot listen on {host}:{port}: {err.strerror or err}") from None
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
