"""The actor's side of the WeightService: fetch, verify, load.

A fetch is all or nothing: chunks are assembled into one buffer, every tensor's size and
sha256 is checked against the manifest, and only then are tensors handed out. A corrupted
or truncated stream raises :class:`WeightCorruption` and is retried. The bytes of a whole
snapshot come over the service's bulk channel when the manifest advertises one (parallel
socket ranges received straight into that buffer), else over parallel Fetch streams; a
client that reaches the service but not its bulk port says so once and keeps to Fetch.

:class:`WeightFollower` keeps an actor current: between generation batches it loads the
newest published version (fetch + verify + load, all or nothing); on failure the actor
keeps its current weights and tries again at the next batch.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import grpc
import numpy as np
import torch

from services.proto_gen.hsd.v1 import weights_pb2 as pb
from services.proto_gen.hsd.v1 import weights_pb2_grpc as pb_grpc
from services.weights.bulk import BulkError, client_tls, receive_range, split
from services.weights.snapshot import decode_chunk, torch_dtype

log = logging.getLogger(__name__)
MAX_MANIFEST_BYTES = 64 << 20
_jitter = random.Random()  # own instance: backoff jitter never touches the global random state
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
             grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS)


class WeightCorruption(RuntimeError):
    """The fetched bytes do not match the manifest (size or sha256)."""


class _Assembly:
    """The receiving side of one fetch: a flat buffer the chunks land in, and a per-tensor
    count of missing bytes. The thread whose chunk completes a tensor verifies it.

    The buffer is ``spare`` when that is large enough (a released earlier fetch's), else
    fresh uninitialised memory: zero-filling it first would cost as much as the transfer."""

    def __init__(self, manifest: pb.Manifest, names: Sequence[str], spare: np.ndarray | None = None) -> None:
        self.manifest = manifest
        wanted = set(names)
        self.wanted = sorted((t for t in manifest.tensors if not names or t.name in wanted),
                             key=lambda t: t.offset)
        self.starts = [t.offset for t in self.wanted]
        self.missing = [t.nbytes for t in self.wanted]
        fits = spare is not None and len(spare) >= manifest.total_bytes
        self.buf = spare if fits else torch.empty(manifest.total_bytes, dtype=torch.uint8).numpy()
        self.view = memoryview(self.buf)
        self.lock = threading.Lock()
        for i, t in enumerate(self.wanted):
            if t.nbytes == 0:
                self._verify(i)

    def add(self, version: int, offset: int, data: memoryview) -> None:
        end = offset + len(data)
        if version != self.manifest.version or end > self.manifest.total_bytes:
            raise WeightCorruption(
                f"chunk for version {version} at [{offset}, {end}) does not fit "
                f"version {self.manifest.version} of {self.manifest.total_bytes} bytes")
        self.view[offset:end] = data
        self.landed(offset, end)

    def landed(self, offset: int, end: int) -> None:
        """Flat bytes [offset, end) are in the buffer: count them, verify completed tensors."""
        done = []
        with self.lock:
            i = max(bisect.bisect_right(self.starts, offset) - 1, 0)
            while i < len(self.wanted) and self.wanted[i].offset < end:
                t = self.wanted[i]
                overlap = min(end, t.offset + t.nbytes) - max(offset, t.offset)
                if overlap > 0:
                    self.missing[i] -= overlap
                    if self.missing[i] < 0:
                        raise WeightCorruption(f"bytes of {t.name} were sent twice")
                    if self.missing[i] == 0:
                        done.append(i)
                i += 1
        for i in done:
            self._verify(i)

    def _verify(self, i: int) -> None:
        t = self.wanted[i]
        if hashlib.sha256(self.view[t.offset : t.offset + t.nbytes]).digest() != t.sha256:
            raise WeightCorruption(f"sha256 mismatch in {t.name} (version {self.manifest.version})")

    def tensors(self) -> dict[str, torch.Tensor]:
        incomplete = [t.name for t, m in zip(self.wanted, self.missing, strict=True) if m]
        if incomplete:
            raise WeightCorruption(f"stream ended with {len(incomplete)} tensors incomplete, "
                                   f"e.g. {incomplete[:3]}")
        out = {}
        for t in self.wanted:
            dtype = torch_dtype(t.dtype)
            count = t.nbytes // torch.empty((), dtype=dtype).element_size()
            tensor = (torch.frombuffer(self.buf, dtype=dtype, count=count, offset=t.offset)
                      if count else torch.empty(0, dtype=dtype))
            out[t.name] = tensor.reshape(tuple(t.shape))
        return out


class WeightClient:
    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls_ca: str | None = None,
        tls_server_name: str | None = None,
        chunk_bytes: int = 4 << 20,
        timeout_s: float = 600.0,
        bulk: bool = True,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.bulk = bulk  # use the bulk channel when the manifest offers one
        self._bulk_tls = client_tls(tls_ca) if tls_ca else None
        self._server_name = tls_server_name
        options = [("grpc.max_receive_message_length", max(chunk_bytes + (1 << 20), MAX_MANIFEST_BYTES)),
                   ("grpc.http2.lookahead_bytes", 32 << 20)]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if tls_ca:
            with open(tls_ca, "rb") as f:
                creds = grpc.ssl_channel_credentials(root_certificates=f.read())
            self.channel = grpc.secure_channel(address, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self.stub = pb_grpc.WeightServiceStub(self.channel)
        # Fetch without protobuf decoding: chunks arrive as raw bytes and decode_chunk
        # takes the data as a view, saving a copy of every byte.
        self._fetch_raw = self.channel.unary_stream(
            "/hsd.v1.WeightService/Fetch", request_serializer=pb.FetchRequest.SerializeToString)
        self._lent: np.ndarray | None = None  # the buffer behind the last fetch's tensors
        self._spare: np.ndarray | None = None  # a released buffer, for the next fetch
        self.token = token
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def close(self) -> None:
        self.channel.close()

    def latest(self, timeout_s: float = 10.0) -> pb.Manifest:
        return self.stub.GetLatest(pb.GetLatestRequest(), metadata=self.metadata, timeout=timeout_s)

    def watch(self, after_version: int = -1):
        """A cancellable stream of manifests (call ``.cancel()`` to end it)."""
        return self.stub.Watch(pb.WatchRequest(after_version=after_version), metadata=self.metadata)

    def release(self) -> None:
        """The tensors of the last fetch are no longer used (their bytes were copied into a
        model): the next fetch may receive into their buffer instead of fresh memory, whose
        first touch (page faults, zeroing) costs as much as a loopback transfer."""
        self._spare, self._lent = self._lent, None

    def fetch_once(
        self, manifest: pb.Manifest, names: Sequence[str] = (), streams: int | None = None
    ) -> dict[str, torch.Tensor]:
        """One attempt: transfer, assemble, verify. Raises WeightCorruption or grpc.RpcError
        (a :class:`BulkError` from the bulk channel carries the same status codes).

        A whole snapshot is split over ``streams`` parallel transfers (default: one per
        core, at most 4); each receiving thread hashes a tensor as soon as its last byte has
        landed, so verification overlaps the transfer."""
        spare, self._spare = self._spare, None
        k = streams or min(4, os.cpu_count() or 1)
        assembly = _Assembly(manifest, names, spare)
        try:
            if not names and manifest.bulk_port and self.bulk:
                try:
                    _parallel([lambda a=a, n=n: self._receive_bulk(manifest, assembly, a, n)
                               for a, n in split(manifest.total_bytes, k)], lambda: None)
                    return self._lend(assembly)
                except BulkError as err:
                    if err.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    unreachable = err
                assembly = _Assembly(manifest, names, assembly.buf)
                tensors = self._fetch_streams(manifest, assembly, names, k)
                log.warning("the weight service answers but its bulk channel does not (%s); "
                            "this client fetches over gRPC from now on", unreachable.details())
                self.bulk = False
                return tensors
            return self._fetch_streams(manifest, assembly, names, k)
        except BaseException:
            self._spare = assembly.buf  # nothing was handed out: the retry reuses the buffer
            raise

    def _receive_bulk(self, manifest: pb.Manifest, assembly: _Assembly, offset: int, length: int) -> None:
        host = self.address.rsplit(":", 1)[0].strip("[]")
        request = pb.BulkRequest(version=manifest.version, offset=offset, length=length,
                                 token=self.token or "")
        receive_range(host, manifest.bulk_port, request, assembly.view[offset : offset + length],
                      assembly.landed, tls=self._bulk_tls, server_name=self._server_name,
                      timeout_s=min(self.timeout_s, 60.0))

    def _fetch_streams(
        self, manifest: pb.Manifest, assembly: _Assembly, names: Sequence[str], k: int
    ) -> dict[str, torch.Tensor]:
        """Parallel Fetch streams: the chunk list split in ``k`` (one stream for ``names``)."""
        if names:
            requests = [pb.FetchRequest(version=manifest.version, names=list(names))]
        else:
            n_chunks = -(-manifest.total_bytes // max(manifest.chunk_bytes, 1))
            requests = [pb.FetchRequest(version=manifest.version, chunk_start=a, chunk_count=n)
                        for a, n in split(n_chunks, k)]
        calls = [self._fetch_raw(r, metadata=self.metadata, timeout=self.timeout_s) for r in requests]

        def receive(call) -> None:
            for raw in call:
                assembly.add(*decode_chunk(raw))

        def cancel_all() -> None:
            for c in calls:
                c.cancel()

        _parallel([lambda c=c: receive(c) for c in calls], cancel_all)
        return self._lend(assembly)

    def _lend(self, assembly: _Assembly) -> dict[str, torch.Tensor]:
        tensors = assembly.tensors()
        self._lent = assembly.buf
        return tensors

    def fetch(
        self, manifest: pb.Manifest, names: Sequence[str] = (), attempts: int = 3
    ) -> dict[str, torch.Tensor]:
        """``fetch_once`` retried on corruption and transient gRPC errors."""
        for attempt in range(1, attempts + 1):
            try:
                return self.fetch_once(manifest, names)
            except WeightCorruption as err:
                failure: Exception = err
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE:
                    raise
                failure = err
            log.warning("fetch of version %d failed (attempt %d/%d): %s",
                        manifest.version, attempt, attempts, failure)
            if attempt < attempts:
                time.sleep(min(2.0, 0.1 * 2**attempt) * _jitter.random())
        raise failure


def _parallel(jobs: Sequence[Callable[[], None]], on_error: Callable[[], None]) -> None:
    """Runs ``jobs`` on threads (the first on this one); the first failure calls
    ``on_error`` (to cut the others short) and is raised once all have ended. A
    cancellation that ``on_error`` itself caused is not the error reported."""
    errors: list[BaseException] = []

    def run(job) -> None:
        try:
            job()
        except BaseException as err:  # handed to the caller below
            errors.append(err)
            on_error()

    threads = [threading.Thread(target=run, args=(j,), daemon=True) for j in jobs[1:]]
    for t in threads:
        t.start()
    run(jobs[0])
    for t in threads:
        t.join()
    real = [e for e in errors if not (isinstance(e, grpc.RpcError) and e.code() == grpc.StatusCode.CANCELLED)]
    if errors:
        raise (real or errors)[0]


def load_into_model(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Copy ``tensors`` into ``model`` in place, all or nothing: names and shapes are
    checked strictly before the first byte is written."""
    state = model.state_dict()
    missing, unexpected = state.keys() - tensors.keys(), tensors.keys() - state.keys()
    wrong = [k for k in state.keys() & tensors.keys() if tuple(state[k].shape) != tuple(tensors[k].shape)]
    if missing or unexpected or wrong:
        raise ValueError(f"weights do not fit the model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}, wrong shape {wrong[:5]}")
    with torch.no_grad():
        for name, target in state.items():
            target.copy_(tensors[name])


class WeightFollower:
    """Keeps an actor current: ``sync()``, between generation batches (the caller's
    thread), loads the newest published version if it is newer than the one loaded.
    ``apply`` must copy the tensors it is given: their buffer receives the next version.

    ``newest_version`` says which version is the newest published. An actor reads it from
    its run's Redis, where the learner records each version once the weight service serves
    it: following costs the service nothing per actor — no stream, no thread, no call
    until there is something to fetch — so the number of actors is bounded by Redis (one
    HGET a batch each), not by the service's threads. Without it, the follower asks the
    service (GetLatest: one short call per sync). The service's Watch stream stays for
    other clients, in threads of its own (``weights.max_watchers``).

    ``current_address`` (optional) says where the weight service is now: when the
    service is unreachable, the follower asks it and moves to a new address (a learner
    restarted on another port), so a restarted learner's versions reach the actors.

    sync()::

        newest_version() ── not above the loaded one ──► False
          │ above
          ▼
        GetLatest ─► manifest ─► Fetch, verify ─► apply ─► True
          │ RpcError or corrupt: keep the current weights ─► False (the next sync retries)
          └ unreachable: address moved? ─► a new client (the old one closed)
    """

    def __init__(
        self,
        client: WeightClient,
        apply: Callable[[dict[str, torch.Tensor], int], None],
        *,
        current_version: int = -1,
        on_sync_seconds: Callable[[float], None] | None = None,
        newest_version: Callable[[], int | None] | None = None,
        current_address: Callable[[], str | None] | None = None,
        connect: Callable[[str], WeightClient] | None = None,
    ) -> None:
        self.client = client
        self.apply = apply
        self.newest_version = newest_version or self._latest_version
        self.current_address = current_address
        self.connect = connect
        self.version = current_version
        self.on_sync_seconds = on_sync_seconds

    def _latest_version(self) -> int | None:
        try:
            return self.client.latest().version
        except grpc.RpcError as err:
            self._unreachable(err)
            return None

    def _unreachable(self, err: grpc.RpcError) -> None:
        log.info("weight service %s: %s", self.client.address, err.code())
        if self.current_address is None or self.connect is None:
            return
        try:
            address = self.current_address()
        except Exception as lookup:  # the address book (Redis) may be down too: keep trying the old one
            log.info("cannot look up the weight service's address: %s", lookup)
            return
        if address and address != self.client.address:
            log.info("weight service moved: %s -> %s", self.client.address, address)
            old, self.client = self.client, self.connect(address)
            old.close()

    def pending(self) -> int | None:
        """The newest published version, if it is newer than the loaded one."""
        newest = self.newest_version()
        return newest if newest is not None and newest > self.version else None

    def sync(self) -> bool:
        """Load the newest published version if it is newer; False if nothing changed or
        the fetch failed (the current weights stay)."""
        if self.pending() is None:
            return False
        start = time.perf_counter()
        try:
            manifest = self.client.latest()
            if manifest.version <= self.version:
                return False
            tensors = self.client.fetch(manifest)
        except grpc.RpcError as err:
            log.warning("keeping version %d: the newest could not be fetched (%s)", self.version, err.code())
            self._unreachable(err)
            return False
        except WeightCorruption as err:
            log.warning("keeping version %d: version %d arrived corrupt (%s)", self.version, manifest.version, err)
            return False
        self.apply(tensors, manifest.version)
        del tensors
        self.client.release()  # apply copied them: their buffer takes the next version
        self.version = manifest.version
        if self.on_sync_seconds:
            self.on_sync_seconds(time.perf_counter() - start)
        return True
