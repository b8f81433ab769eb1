"""The weight service over real gRPC sockets (and its bulk channel) on free ports.

Tests that move snapshot bytes run over both transfer paths: the bulk channel ("bulk")
and the gRPC Fetch streams ("grpc") that clients fall back to."""

from __future__ import annotations

import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.proto_gen.hsd.v1 import weights_pb2 as pb
from services.weights.bulk import BulkError, receive_range
from services.weights.client import WeightClient, WeightCorruption, WeightFollower, load_into_model
from services.weights.server import SERVICE, WeightServer
from services.weights.snapshot import tensor_bytes
from tests.integration.tls import make_tls
from tests.waiting import wait_until

CHUNK = 64 << 10  # small chunks, so every test crosses many chunk boundaries


def _state(seed: int = 0, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": (torch.randn(300, 128, generator=g) * scale).to(torch.bfloat16),
        "block.0.weight": torch.randn(128, 128, generator=g) * scale,
        "block.0.bias": torch.randn(128, generator=g) * scale,
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0),
        "steps": torch.arange(7, dtype=torch.int64),
    }


def _assert_equal(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert torch.equal(got[k], want[k]), k


class _FaultySnapshot:
    """A snapshot whose transfers (Fetch chunks or bulk views) are altered: the first piece
    gets its last byte flipped (``flip``), or the last piece is left out (``truncate``)."""

    def __init__(self, snapshot, fault: str) -> None:
        self._snapshot, self._fault = snapshot, fault

    def __getattr__(self, name):
        return getattr(self._snapshot, name)

    def _alter(self, pieces: list, flip) -> list:
        if self._fault == "truncate":
            return pieces[:-1]
        return [flip(pieces[0]), *pieces[1:]] if pieces else pieces

    def iter_chunks(self, *args):
        return iter(self._alter(list(self._snapshot.iter_chunks(*args)), _flip_last_byte))

    def views(self, lo, hi):
        return iter(self._alter(list(self._snapshot.views(lo, hi)),
                                lambda piece: (piece[0], memoryview(_flip_last_byte(piece[1])))))


def _flip_last_byte(data) -> bytes:
    flipped = bytearray(data)
    flipped[-1] ^= 0xFF
    return bytes(flipped)


class FaultyServer(WeightServer):
    """The weight service with a fault injected into the next ``faults`` transfers."""

    fault = "flip"
    faults = 0

    def _lookup(self, version):
        snapshot, available = super()._lookup(version)
        if snapshot is not None and self.faults > 0:
            self.faults -= 1
            return _FaultySnapshot(snapshot, self.fault), available
        return snapshot, available


class _Sent:
    def __init__(self) -> None:
        self.bytes = 0
        self.lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self.lock:
            self.bytes += n


@pytest.fixture
def sent():
    return _Sent()


@pytest.fixture
def server(sent):
    s = WeightServer(port=0, keep=2, chunk_bytes=CHUNK, on_bytes_sent=sent).start()
    yield s
    s.stop(grace=0)


@pytest.fixture(params=["bulk", "grpc"])
def transport(request) -> str:
    return request.param


def _client(address: str, transport: str, **kw) -> WeightClient:
    return WeightClient(address, bulk=transport == "bulk", **kw)


def test_publish_and_fetch_round_trip_keeps_dtypes(server, transport, sent):
    state = _state()
    server.publish(1, state)
    client = _client(server.address, transport)
    manifest = client.latest()
    assert manifest.version == 1 and manifest.total_bytes == sum(t.numel() * t.element_size() for t in state.values())
    assert {t.name: t.dtype for t in manifest.tensors}["embed.weight"] == "bfloat16"
    assert manifest.bulk_port == server.bulk.port > 0
    _assert_equal(client.fetch(manifest), state)
    # the bulk channel sends the bare bytes; Fetch streams wrap each chunk in a message
    # (the server counts a piece after the client may already have it: wait for the count)
    assert _until(lambda: sent.bytes >= manifest.total_bytes, 10)
    assert (sent.bytes == manifest.total_bytes) == (transport == "bulk")
    assert sent.bytes >= manifest.total_bytes and client.bulk == (transport == "bulk")
    part = client.fetch(manifest, names=["block.0.bias", "scalar"])  # by name: always Fetch
    _assert_equal(part, {k: state[k] for k in ("block.0.bias", "scalar")})
    client.close()


def test_concurrent_clients_get_identical_verified_weights(server, transport):
    state = _state(1)
    server.publish(5, state)
    results, errors = [], []

    def worker():
        try:
            c = _client(server.address, transport)
            results.append(c.fetch(c.latest()))
            c.close()
        except Exception as err:  # collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(results) == 8
    for r in results:
        _assert_equal(r, state)


def test_a_released_buffer_takes_the_next_version_and_a_held_one_is_never_touched(server, transport):
    client = _client(server.address, transport)
    server.publish(1, _state(1))
    first = client.fetch(client.latest())
    server.publish(2, _state(2))
    second = client.fetch(client.latest())  # the first is still held: a buffer of its own
    _assert_equal(first, _state(1))
    _assert_equal(second, _state(2))
    client.release()
    server.publish(3, _state(3))
    third = client.fetch(client.latest())
    _assert_equal(third, _state(3))
    assert third["embed.weight"].data_ptr() == second["embed.weight"].data_ptr()
    _assert_equal(first, _state(1))


def test_watch_pushes_each_new_version(server):
    client = WeightClient(server.address)
    stream = client.watch(-1)
    seen = []

    def read():
        try:
            for m in stream:
                seen.append(m.version)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.CANCELLED

    reader = threading.Thread(target=read)
    reader.start()
    for v in (1, 2, 3):
        server.publish(v, _state(v))
        deadline = time.monotonic() + 30
        while v not in seen and time.monotonic() < deadline:
            time.sleep(0.01)
    stream.cancel()
    reader.join(timeout=5)
    assert seen == [1, 2, 3]


def test_bearer_token_is_required_when_configured(transport):
    with WeightServer(port=0, token="s3cret", chunk_bytes=CHUNK) as s:
        s.publish(1, _state())
        for token in (None, "wrong"):
            with pytest.raises(grpc.RpcError) as info:
                WeightClient(s.address, token=token).latest()
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as info:
                c = WeightClient(s.address, token=token)
                list(c.stub.Fetch(pb.FetchRequest(version=1), metadata=c.metadata))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(BulkError) as info:
                _bulk_range(s, 1, 0, 16, token=token)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        good = _client(s.address, transport, token="s3cret")
        _assert_equal(good.fetch(good.latest()), _state())
        # health checks carry no token (kubelet probes)
        stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(s.address))
        reply = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_tls_with_a_client_ca(tmp_path, transport):
    tls = make_tls(tmp_path)
    with WeightServer(host="127.0.0.1", port=0, tls_cert=tls["cert"], tls_key=tls["key"], chunk_bytes=CHUNK) as s:
        s.publish(1, _state())
        secure = _client(f"localhost:{s.port}", transport, tls_ca=tls["ca"])
        _assert_equal(secure.fetch(secure.latest()), _state())
        assert secure.bulk == (transport == "bulk")  # the bulk channel spoke TLS too
        plain = WeightClient(f"localhost:{s.port}")
        with pytest.raises(grpc.RpcError) as info:
            plain.latest(timeout_s=3)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(BulkError) as info:  # plain bytes to the TLS bulk port
            _bulk_range(s, 1, 0, 16)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def _bulk_range(server: WeightServer, version: int, offset: int, length: int, token: str | None = None):
    buf = bytearray(length)
    request = pb.BulkRequest(version=version, offset=offset, length=length, token=token or "")
    receive_range("127.0.0.1", server.bulk.port, request, memoryview(buf), lambda a, b: None, timeout_s=10)
    return bytes(buf)


def test_bulk_ranges_are_checked_and_served_exactly(server):
    state = _state(3)
    server.publish(1, state)
    flat = b"".join(bytes(tensor_bytes(t)) for t in state.values())
    assert _bulk_range(server, 1, 1000, 70_000) == flat[1000:71_000]  # across chunk boundaries
    with pytest.raises(BulkError) as info:
        _bulk_range(server, 1, len(flat) - 10, 11)
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(BulkError) as info:
        _bulk_range(server, 9, 0, 10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "[1]" in info.value.details()


def test_a_client_that_cannot_reach_the_bulk_port_keeps_to_grpc(server):
    state = _state(4)
    server.publish(1, state)
    server.bulk.stop()  # the manifest still advertises the port, as behind a firewall
    client = WeightClient(server.address)
    manifest = client.latest()
    assert manifest.bulk_port and client.bulk
    _assert_equal(client.fetch_once(manifest), state)
    assert not client.bulk
    unserved = WeightServer(port=0, bulk_port=None, chunk_bytes=CHUNK).start()
    try:
        unserved.publish(1, state)
        assert WeightClient(unserved.address).latest().bulk_port == 0
    finally:
        unserved.stop(grace=0)


@pytest.fixture
def faulty_server():
    s = FaultyServer(port=0, keep=2, chunk_bytes=CHUNK).start()
    yield s
    s.stop(grace=0)


def test_a_flipped_byte_is_detected_and_the_fetch_retried(faulty_server, transport):
    state = _state(2)
    faulty_server.publish(1, state)
    client = _client(faulty_server.address, transport)
    manifest = client.latest()
    faulty_server.faults = 1
    with pytest.raises(WeightCorruption, match="sha256 mismatch"):
        client.fetch_once(manifest)
    assert faulty_server.faults == 0, "the fault was never served"
    faulty_server.faults = 1
    _assert_equal(client.fetch(manifest, attempts=2), state)  # the retry gets clean bytes
    assert faulty_server.faults == 0


def test_a_transfer_cut_short_by_the_server_is_never_loaded(faulty_server, transport):
    state = _state(3)
    faulty_server.publish(1, state)
    faulty_server.fault = "truncate"
    client = _client(faulty_server.address, transport)
    manifest = client.latest()
    faulty_server.faults = 1
    with pytest.raises((WeightCorruption, grpc.RpcError)) as info:
        client.fetch_once(manifest)
    if isinstance(info.value, grpc.RpcError):  # the bulk channel counts the missing bytes
        assert info.value.code() == grpc.StatusCode.DATA_LOSS
    faulty_server.faults = 1
    _assert_equal(client.fetch(manifest, attempts=2), state)


def test_a_manifest_promising_other_sizes_than_the_stream_is_corruption(server, transport):
    server.publish(1, _state())
    client = _client(server.address, transport)
    manifest = client.latest()
    del manifest.tensors[-1]  # the manifest now promises fewer bytes than the stream holds
    manifest.tensors[0].nbytes += 2
    with pytest.raises(WeightCorruption):
        client.fetch_once(manifest)


def test_evicted_and_unknown_versions_are_not_found_naming_what_exists(server, transport):
    for v in (1, 2, 3):
        server.publish(v, _state(v))
    assert server.versions == [2, 3]
    client = _client(server.address, transport)
    stale = client.latest()
    stale.version = 1
    with pytest.raises(grpc.RpcError) as info:
        client.fetch(stale)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "[2, 3]" in info.value.details()
    with pytest.raises(ValueError):
        server.publish(3, _state())


def test_a_version_published_mid_fetch_does_not_disturb_it():
    with WeightServer(port=0, keep=1, chunk_bytes=4096) as s:
        state = _state(7)
        s.publish(1, state)
        client = WeightClient(s.address)
        manifest = client.latest()
        stream = client.stub.Fetch(pb.FetchRequest(version=1))
        first = next(stream)
        for v in range(2, 6):
            s.publish(v, _state(v, scale=-1.0))  # version 1 is evicted meanwhile
        assert s.versions == [5]
        chunks = [first, *stream]
        buf = bytearray(manifest.total_bytes)
        for c in chunks:
            buf[c.offset : c.offset + len(c.data)] = c.data
        assert bytes(buf) == b"".join(bytes(tensor_bytes(state[t.name])) for t in manifest.tensors)


def test_a_version_published_mid_bulk_transfer_does_not_disturb_it():
    big = {"w": torch.randn(4 << 20, generator=torch.Generator().manual_seed(1))}  # 16 MiB: outlasts socket buffers
    with WeightServer(port=0, keep=1, chunk_bytes=1 << 20) as s:
        s.publish(1, big)
        want = bytes(tensor_bytes(big["w"]))
        published = []

        def landed(start, end):
            if not published:  # the first MiB is in: evict version 1 while the rest is in flight
                for v in range(2, 5):
                    s.publish(v, {"w": -big["w"]})
                published.append(end)

        buf = bytearray(len(want))
        receive_range("127.0.0.1", s.bulk.port, pb.BulkRequest(version=1, offset=0, length=len(want)),
                      memoryview(buf), landed, timeout_s=30)
        assert s.versions == [4] and published[0] < len(want)
        assert bytes(buf) == want


def test_bulk_transfers_over_the_limit_are_told_to_retry():
    big = {"w": torch.randn(4 << 20, generator=torch.Generator().manual_seed(2))}
    with WeightServer(port=0, max_workers=1, chunk_bytes=1 << 20) as s:
        s.publish(1, big)
        nbytes = big["w"].numel() * 4
        stalled = socket.create_connection(("127.0.0.1", s.bulk.port))  # asks, then never reads
        body = pb.BulkRequest(version=1, offset=0, length=nbytes).SerializeToString()
        stalled.sendall(struct.pack("<I", len(body)) + body)

        def refused() -> bool:
            try:
                _bulk_range(s, 1, 0, 16)
            except BulkError as err:
                return err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry" in err.details()
            return False

        assert _until(refused, 10)
        stalled.close()  # its transfer breaks off and frees the slot
        assert _until(lambda: not refused(), 10)
        assert _bulk_range(s, 1, 0, nbytes) == bytes(tensor_bytes(big["w"]))


def test_reflection_lists_the_service(server):
    stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(server.address))
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert SERVICE in names


def test_load_into_a_transformers_model_is_strict_and_all_or_nothing(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trained = {k: v + 1.0 for k, v in model.state_dict().items()}
    with WeightServer(port=0, chunk_bytes=CHUNK) as s:
        s.publish(1, trained)
        client = WeightClient(s.address)
        tensors = client.fetch(client.latest())
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    load_into_model(fresh, tensors)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, trained[k]), k
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    bad = dict(tensors)
    bad["model.norm.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="wrong shape"):
        load_into_model(fresh, bad)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, before[k]), k  # nothing was written


def test_follower_keeps_its_weights_while_the_service_is_down_and_catches_up():
    applied = []
    server = WeightServer(port=0, chunk_bytes=CHUNK).start()
    port = server.port
    server.publish(1, _state(1))
    follower = WeightFollower(WeightClient(server.address), lambda t, v: applied.append(v))  # asks GetLatest
    assert follower.pending() == 1
    assert follower.sync() and follower.version == 1
    server.stop(grace=0)
    assert follower.sync() is False and follower.version == 1  # nothing new; generation goes on
    server = WeightServer(port=port, chunk_bytes=CHUNK).start()  # back on the same address
    try:
        server.publish(2, _state(2))
        server.publish(3, _state(3))
        assert _until(lambda: follower.pending() == 3, 15)
        assert follower.sync() and follower.version == 3
        assert applied == [1, 3]
    finally:
        server.stop(grace=0)


def test_followers_hold_no_service_thread_between_versions():
    """Actors learn of a new version from the run's Redis (here: a shared number), so a
    service with 2 worker threads and no watcher threads serves 100 followers: none holds
    a call while it waits, and each fetches the new version when it is announced."""
    server = WeightServer(port=0, chunk_bytes=CHUNK, max_workers=2, max_watchers=0).start()
    announced = {"version": 1}
    server.publish(1, _state(1))
    followers = [WeightFollower(WeightClient(server.address), lambda t, v: None,
                                newest_version=lambda: announced["version"]) for _ in range(100)]
    try:
        assert all(f.sync() for f in followers) and {f.version for f in followers} == {1}
        assert not any(f.sync() for f in followers)  # nothing new: no call made, nothing loaded
        server.publish(2, _state(2))
        announced["version"] = 2  # what the learner records once the service serves it
        assert all(f.sync() for f in followers) and {f.version for f in followers} == {2}
    finally:
        for f in followers:
            f.client.close()
        server.stop(grace=0)


def _until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_two_hundred_watchers_leave_get_latest_and_fetch_served(server):
    """Each Watch holds a server thread; 200 of them (actors on 10 connections) must not
    starve GetLatest and Fetch, and every one of them sees a new version."""
    clients = [WeightClient(server.address) for _ in range(10)]
    streams = [c.watch(-1) for c in clients for _ in range(20)]
    readers = ThreadPoolExecutor(50)
    try:
        server.publish(1, _state(1))
        firsts = [readers.submit(next, s) for s in streams]
        _, pending = wait(firsts, timeout=60)
        assert not pending, f"{len(pending)} of 200 watchers saw no version in 60 s"
        assert [f.result().version for f in firsts] == [1] * 200
        probe = WeightClient(server.address)
        latest = probe.latest(timeout_s=5)
        assert latest.version == 1
        _assert_equal(probe.fetch(latest), _state(1))
    finally:
        for s in streams:
            s.cancel()
        readers.shutdown()


def test_a_watcher_beyond_max_watchers_is_refused_and_the_slot_frees_when_one_leaves():
    with WeightServer(port=0, chunk_bytes=CHUNK, max_watchers=2) as s:
        client = WeightClient(s.address)
        held = [client.watch(-1), client.watch(-1)]
        s.publish(1, _state())
        assert [next(w).version for w in held] == [1, 1]
        with pytest.raises(grpc.RpcError) as info:
            next(client.watch(-1))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "2 watchers" in info.value.details()
        held.pop().cancel()
        wait_until(lambda: _watch_once(client), 30, "a freed watcher slot was not given back")
        held[0].cancel()


def _watch_once(client: WeightClient) -> bool:
    stream = client.watch(-1)
    try:
        return next(stream).version == 1
    except grpc.RpcError:
        return False
    finally:
        stream.cancel()


def test_bulk_garbage_is_dropped_and_idle_connections_are_capped(caplog):
    with WeightServer(port=0, chunk_bytes=CHUNK, max_workers=1) as s:  # bulk: 4 connections open at most
        s.publish(1, _state(5))
        with socket.create_connection(("127.0.0.1", s.bulk.port)) as garbage:
            garbage.sendall(struct.pack("<I", 12) + b"\xff" * 12)  # a length, then no protobuf
            garbage.settimeout(10)
            assert garbage.recv(1) == b""  # closed, nothing answered
        assert _bulk_range(s, 1, 0, 100)  # and the channel serves on
        idle = [socket.create_connection(("127.0.0.1", s.bulk.port)) for _ in range(4)]
        try:
            extra = socket.create_connection(("127.0.0.1", s.bulk.port))
            extra.settimeout(10)
            assert extra.recv(1) == b"", "a fifth connection was kept beside four idle ones"
            extra.close()
        finally:
            for sock in idle:
                sock.close()
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
