"""The WeightService gRPC server the learner hosts (rank 0).

Version lifecycle::

    publish(v, state_dict) ──► Snapshot.build (flatten, sha256, pre-serialized chunks)
        └─► available: GetLatest / Watch / Fetch(v) serve it
              └─► evicted when more than `keep` newer versions exist; a Fetch already
                  streaming it keeps its own reference and completes unchanged

Watch streams block on a condition that ``publish`` notifies; they end when the client
goes away or the server stops. Each holds one of the server's threads, so the pool has
``max_watchers`` threads for them beyond the ``max_workers`` that serve GetLatest and
Fetch: watchers can never starve those calls; a watcher beyond ``max_watchers`` is refused
with RESOURCE_EXHAUSTED (the actor's follower retries with backoff and still syncs). Auth: ``authorization: Bearer <token>`` on every call but
the gRPC health service (kubelet probes carry no token). TLS when cert and key are given.

Beside the gRPC port, a bulk channel (``services.weights.bulk``) serves the same snapshots'
bytes over a plain socket with the same token and TLS; manifests advertise its port, and
Fetch stays the path for clients that cannot reach it.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.errors import StartupError
from services.proto_gen.hsd.v1 import weights_pb2 as pb
from services.weights.bulk import BulkServer, server_tls
from services.weights.snapshot import Snapshot

log = logging.getLogger(__name__)
SERVICE = "hsd.v1.WeightService"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
MAX_REQUEST_BYTES = 1 << 20


class _BearerAuth(grpc.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, details):
        if details.method.startswith(HEALTH_PREFIX):
            return continuation(details)
        got = dict(details.invocation_metadata).get("authorization", "")
        if hmac.compare_digest(got.encode(), self._expected):
            return continuation(details)
        reason = "missing bearer token" if not got else "wrong bearer token"

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

        return grpc.unary_unary_rpc_method_handler(deny)


class WeightServer:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keep: int = 3,
        chunk_bytes: int = 4 << 20,
        token: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        max_workers: int = 32,
        max_watchers: int = 256,
        bulk_port: int | None = 0,
        on_publish: Callable[[Snapshot, float], None] | None = None,
        on_bytes_sent: Callable[[int], None] | None = None,
    ) -> None:
        self.keep = keep
        self.chunk_bytes = chunk_bytes
        self._snapshots: OrderedDict[int, Snapshot] = OrderedDict()
        self._cond = threading.Condition()
        self._stopping = False
        self._on_publish = on_publish
        self._on_bytes_sent = on_bytes_sent
        self._max_watchers = max_watchers
        self._watchers = 0  # under _cond's lock
        interceptors = [_BearerAuth(token)] if token else []
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers + max_watchers, thread_name_prefix="weights"),
            interceptors=interceptors,
            options=[
                ("grpc.max_send_message_length", chunk_bytes + (1 << 20)),
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.server.add_generic_rpc_handlers((self._handlers(),))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        try:
            if tls_cert and tls_key:
                with open(tls_key, "rb") as k, open(tls_cert, "rb") as c:
                    creds = grpc.ssl_server_credentials([(k.read(), c.read())])
                self.port = self.server.add_secure_port(f"{host}:{port}", creds)
            else:
                self.port = self.server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:  # grpc's "Failed to bind"
            self.port = 0
        if not self.port:
            raise StartupError(f"weights.port: cannot listen on {host}:{port} (in use?)")
        self.host = host
        self.bulk = None if bulk_port is None else BulkServer(
            host, bulk_port, self._lookup, token=token,
            tls=server_tls(tls_cert, tls_key) if tls_cert and tls_key else None,
            max_transfers=max_workers, on_bytes_sent=on_bytes_sent)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "GetLatest": grpc.unary_unary_rpc_method_handler(
                self._get_latest, pb.GetLatestRequest.FromString, pb.Manifest.SerializeToString),
            "Watch": grpc.unary_stream_rpc_method_handler(
                self._watch, pb.WatchRequest.FromString, pb.Manifest.SerializeToString),
            # Fetch yields pre-serialized Chunk messages: the serializer passes them through.
            "Fetch": grpc.unary_stream_rpc_method_handler(
                self._fetch, pb.FetchRequest.FromString, lambda b: b),
        })

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> WeightServer:
        self.server.start()
        if self.bulk:
            self.bulk.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
        log.info("weight service on %s", self.address)
        return self

    def stop(self, grace: float = 2.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self.health.enter_graceful_shutdown()
        if self.bulk:
            self.bulk.stop()
        self.server.stop(grace).wait()

    def __enter__(self) -> WeightServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ publishing

    def publish(self, version: int, state_dict: Mapping[str, torch.Tensor]) -> Snapshot:
        start = time.perf_counter()
        snapshot = Snapshot.build(version, state_dict, self.chunk_bytes)
        snapshot.manifest.bulk_port = self.bulk.port if self.bulk else 0
        with self._cond:
            if self._snapshots and version <= next(reversed(self._snapshots)):
                raise ValueError(f"version {version} is not above {next(reversed(self._snapshots))}")
            self._snapshots[version] = snapshot
            while len(self._snapshots) > self.keep:
                self._snapshots.popitem(last=False)
            self._cond.notify_all()
        if self._on_publish:
            self._on_publish(snapshot, time.perf_counter() - start)
        return snapshot

    @property
    def versions(self) -> list[int]:
        with self._cond:
            return list(self._snapshots)

    # ------------------------------------------------------------------ RPCs

    def _latest(self) -> Snapshot | None:
        with self._cond:
            return next(reversed(self._snapshots.values()), None)

    def _get_latest(self, request, context) -> pb.Manifest:
        snap = self._latest()
        if snap is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no version published yet")
        return snap.manifest

    def _newest_version(self) -> int:
        """Caller holds the condition's lock."""
        return next(reversed(self._snapshots), -1)

    def _watch(self, request, context) -> Iterator[pb.Manifest]:
        with self._cond:
            full = self._watchers >= self._max_watchers
            if not full:
                self._watchers += 1
        if full:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{self._max_watchers} watchers already; poll GetLatest or retry later")
        try:
            seen = request.after_version
            while context.is_active():
                with self._cond:
                    self._cond.wait_for(
                        lambda seen=seen: self._stopping or self._newest_version() > seen, timeout=1.0
                    )
                    if self._stopping:
                        return
                    snap = next(reversed(self._snapshots.values()), None)
                if snap is not None and snap.version > seen:
                    seen = snap.version
                    yield snap.manifest
        finally:
            with self._cond:
                self._watchers -= 1

    def _lookup(self, version: int) -> tuple[Snapshot | None, list[int]]:
        """The snapshot of ``version`` (None if unknown or evicted) and the versions there are."""
        with self._cond:
            return self._snapshots.get(version), list(self._snapshots)

    def _fetch(self, request, context) -> Iterator[bytes]:
        snap, available = self._lookup(request.version)
        if snap is None:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"version {request.version} is not available; available: {available}")
        try:
            chunks = snap.iter_chunks(list(request.names), request.chunk_start, request.chunk_count)
            first = next(chunks, None)
        except KeyError as err:
            context.abort(grpc.StatusCode.NOT_FOUND, str(err))
        if first is None:
            return
        for chunk in itertools.chain((first,), chunks):
            if self._on_bytes_sent:
                self._on_bytes_sent(len(chunk))
            yield chunk
