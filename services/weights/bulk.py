"""The weight service's bulk channel: snapshot bytes over a plain socket (TLS when the
service has TLS), beside the gRPC service that keeps versions, manifests and auth.

Why a side channel: grpc-python moves a snapshot at 0.4–0.6 GB/s on loopback where a bare
socket moves 2 GB/s (every 4 MiB message crosses gRPC's core, HTTP/2 framing and a Python
bytes object). Here the server hands memoryviews of the snapshot's immutable buffer to
``sendall`` and the client ``recv_into``s the bytes straight into the buffer they are
verified and loaded from: one kernel copy on each side, as with the bare socket. Nothing is
trusted for arriving: the client checks every tensor's sha256 from the manifest, which
came over the authenticated gRPC service.

Wire (one request per connection; lengths u32 little-endian)::

    client ──► len, BulkRequest{version, offset, length, token}
    server ──► len, BulkReply{code, message}   code 0: then `length` raw bytes follow

Connection lifecycle on the server::

    accept ─┬─ 4 × max_transfers connections already open ─► close at once
            └─ handler thread: TLS handshake? ─► read request (REQUEST_TIMEOUT_S; garbage or
               silence ─► close) ─► auth, version, range checks
            ├─ refused: BulkReply{code≠0, reason} ─► close
            ├─ max_transfers already sending: BulkReply{RESOURCE_EXHAUSTED} ─► close
            │    (the client retries with backoff, as after a busy Fetch)
            └─ BulkReply{0} ─► sendall(views of the snapshot) ─► close
    stop(): the listener closes, open connections are shut down (their clients see a
    short read, which is an error they retry)
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator

import grpc
from google.protobuf.message import DecodeError

from services.errors import StartupError
from services.proto_gen.hsd.v1 import weights_pb2 as pb
from services.weights.snapshot import Snapshot

log = logging.getLogger(__name__)
_LEN = struct.Struct("<I")
MAX_HEADER_BYTES = 64 << 10
IO_TIMEOUT_S = 60.0  # a peer silent this long is gone
REQUEST_TIMEOUT_S = 10.0  # a connection that has not sent its request by then is closed
CONNECT_TIMEOUT_S = 10.0  # a port a firewall drops must not stall a fetch for IO_TIMEOUT_S


class BulkError(grpc.RpcError):
    """A bulk transfer that failed, with the gRPC status code it stands for, so a caller
    handles it like the same failure of a Fetch stream."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self._code, self._message = code, message

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def _kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """Blocking mode with the kernel's SO_RCVTIMEO/SO_SNDTIMEO: a Python socket timeout
    would make every call a poll() plus a non-blocking send that moves only what fits the
    socket buffer, which halves loopback throughput. A timed-out call raises OSError."""
    sock.settimeout(None)
    tv = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise ConnectionError(f"connection closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


def _send_message(sock: socket.socket, message) -> None:
    body = message.SerializeToString()
    sock.sendall(_LEN.pack(len(body)) + body)


def _recv_message(sock: socket.socket, kind):
    (n,) = _LEN.unpack(_recv_exactly(sock, _LEN.size))
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"bulk header of {n} bytes is over the {MAX_HEADER_BYTES}-byte limit")
    return kind.FromString(_recv_exactly(sock, n))


class BulkServer:
    """Serves byte ranges of the snapshots that ``lookup(version)`` returns."""

    def __init__(
        self,
        host: str,
        port: int,
        lookup: Callable[[int], tuple[Snapshot | None, list[int]]],
        *,
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
        max_transfers: int = 32,
        on_bytes_sent: Callable[[int], None] | None = None,
    ) -> None:
        self._lookup = lookup
        self._token = token
        self._tls = tls
        self._on_bytes_sent = on_bytes_sent
        self._sending = threading.BoundedSemaphore(max_transfers)
        self._max_transfers = max_transfers
        # connections (each a thread) beyond those sending: waiting for their request or
        # for RESOURCE_EXHAUSTED; more are closed at once, so idle sockets cannot pile up
        self._max_connections = 4 * max_transfers
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        try:
            self._listener = socket.create_server((host, port), backlog=64)
        except OSError as err:
            raise StartupError(f"weights.bulk_port: cannot listen on {host}:{port}: {err.strerror or err}") from None
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="weights-bulk", daemon=True)

    def start(self) -> BulkServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # shutdown, not just close, wakes a blocked accept()
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # the listener was closed: stop
                return
            with self._lock:
                full = len(self._open) >= self._max_connections
                if not full:
                    self._open.add(conn)
            if full:
                log.info("bulk channel: %d connections open; closing a new one", self._max_connections)
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), name="weights-bulk-send", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        sock = conn
        try:
            _kernel_timeouts(conn, REQUEST_TIMEOUT_S)
            if self._tls:  # the TLS socket takes over conn's descriptor
                sock = self._tls.wrap_socket(conn, server_side=True)
                with self._lock:
                    self._open.discard(conn)
                    self._open.add(sock)
            req = _recv_message(sock, pb.BulkRequest)
            _kernel_timeouts(sock, IO_TIMEOUT_S)
            self._answer(sock, req)
        except (OSError, ValueError, DecodeError) as err:  # ssl.SSLError is an OSError
            # the client sees the short transfer and retries; a garbage request is dropped;
            # the server carries on either way
            log.info("a bulk connection ended early: %s", err)
        finally:
            with self._lock:
                self._open.discard(sock)
                self._open.discard(conn)
            sock.close()

    def _answer(self, sock: socket.socket, req: pb.BulkRequest) -> None:
        if self._token is not None and not hmac.compare_digest(req.token.encode(), self._token.encode()):
            reason = "missing bearer token" if not req.token else "wrong bearer token"
            return _send_message(sock, pb.BulkReply(code=grpc.StatusCode.UNAUTHENTICATED.value[0], message=reason))
        snap, available = self._lookup(req.version)
        if snap is None:
            return _send_message(sock, pb.BulkReply(
                code=grpc.StatusCode.NOT_FOUND.value[0],
                message=f"version {req.version} is not available; available: {available}"))
        total = snap.manifest.total_bytes
        if req.offset + req.length > total:
            return _send_message(sock, pb.BulkReply(
                code=grpc.StatusCode.OUT_OF_RANGE.value[0],
                message=f"[{req.offset}, {req.offset + req.length}) is outside the {total} bytes of "
                        f"version {req.version}"))
        if not self._sending.acquire(blocking=False):
            return _send_message(sock, pb.BulkReply(
                code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                message=f"{self._max_transfers} transfers are in progress; retry"))
        try:
            _send_message(sock, pb.BulkReply(code=0))
            for _, data in snap.views(req.offset, req.offset + req.length):
                sock.sendall(data)
                if self._on_bytes_sent:
                    self._on_bytes_sent(len(data))
        finally:
            self._sending.release()


def client_tls(ca_file: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)


def server_tls(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


def receive_range(
    host: str,
    port: int,
    request: pb.BulkRequest,
    into: memoryview,
    landed: Callable[[int, int], None],
    *,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
    timeout_s: float = IO_TIMEOUT_S,
    step: int = 1 << 20,
) -> None:
    """Receives ``request``'s byte range into ``into`` (which is that range), calling
    ``landed(start, end)`` with flat offsets each time ≥ ``step`` more bytes are in, so the
    caller can verify tensors while the rest arrives. Failures raise :class:`BulkError`:
    UNAVAILABLE when the channel cannot be reached, the server's code when it refuses,
    DATA_LOSS when the stream ends early."""
    try:
        raw = socket.create_connection((host, port), timeout=min(timeout_s, CONNECT_TIMEOUT_S))
    except OSError as err:
        raise BulkError(grpc.StatusCode.UNAVAILABLE, f"bulk channel {host}:{port}: {err}") from err
    with raw:
        _kernel_timeouts(raw, timeout_s)
        try:
            sock = tls.wrap_socket(raw, server_hostname=server_name or host) if tls else raw
            _send_message(sock, request)
            reply = _recv_message(sock, pb.BulkReply)
        except (OSError, ValueError) as err:
            raise BulkError(grpc.StatusCode.UNAVAILABLE, f"bulk channel {host}:{port}: {err}") from err
        if reply.code:
            raise BulkError(_CODES.get(reply.code, grpc.StatusCode.UNKNOWN), reply.message)
        got = marked = 0
        try:
            while got < len(into):
                k = sock.recv_into(into[got:], min(len(into) - got, 4 << 20))
                if not k:
                    break
                got += k
                if got - marked >= step or got == len(into):
                    landed(request.offset + marked, request.offset + got)
                    marked = got
        except OSError as err:
            raise BulkError(grpc.StatusCode.DATA_LOSS, f"bulk transfer broke after {got} bytes: {err}") from err
        if got < len(into):
            raise BulkError(grpc.StatusCode.DATA_LOSS,
                            f"bulk transfer ended after {got} of {len(into)} bytes")


def split(total: int, parts: int) -> Iterator[tuple[int, int]]:
    """``parts`` contiguous (offset, length) ranges covering [0, total), none empty."""
    parts = max(1, min(parts, total))
    bounds = [total * i // parts for i in range(parts + 1)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        if b > a:
            yield a, b - a
