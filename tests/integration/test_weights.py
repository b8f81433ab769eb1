"""The weight service over real gRPC sockets on free ports."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.proto_gen.hsd.v1 import weights_pb2 as pb
from services.weights_client import WeightClient, WeightCorruption, WeightFollower, load_into_model
from services.weights_server import SERVICE, WeightServer
from services.weights_snapshot import tensor_bytes
from tests.integration.tls import make_tls

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


@pytest.fixture
def server():
    s = WeightServer(port=0, keep=2, chunk_bytes=CHUNK).start()
    yield s
    s.stop(grace=0)


def test_publish_and_fetch_round_trip_keeps_dtypes(server):
    state = _state()
    server.publish(1, state)
    client = WeightClient(server.address)
    manifest = client.latest()
    assert manifest.version == 1 and manifest.total_bytes == sum(t.numel() * t.element_size() for t in state.values())
    assert {t.name: t.dtype for t in manifest.tensors}["embed.weight"] == "bfloat16"
    _assert_equal(client.fetch(manifest), state)
    part = client.fetch(manifest, names=["block.0.bias", "scalar"])
    _assert_equal(part, {k: state[k] for k in ("block.0.bias", "scalar")})
    client.close()


def test_concurrent_clients_get_identical_verified_weights(server):
    state = _state(1)
    server.publish(5, state)
    results, errors = [], []

    def worker():
        try:
            c = WeightClient(server.address)
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
        deadline = time.monotonic() + 5
        while v not in seen and time.monotonic() < deadline:
            time.sleep(0.01)
    stream.cancel()
    reader.join(timeout=5)
    assert seen == [1, 2, 3]


def test_bearer_token_is_required_when_configured():
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
        good = WeightClient(s.address, token="s3cret")
        _assert_equal(good.fetch(good.latest()), _state())
        # health checks carry no token (kubelet probes)
        stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(s.address))
        reply = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_tls_with_a_client_ca(tmp_path):
    tls = make_tls(tmp_path)
    with WeightServer(host="127.0.0.1", port=0, tls_cert=tls["cert"], tls_key=tls["key"], chunk_bytes=CHUNK) as s:
        s.publish(1, _state())
        secure = WeightClient(f"localhost:{s.port}", tls_ca=tls["ca"])
        _assert_equal(secure.fetch(secure.latest()), _state())
        plain = WeightClient(f"localhost:{s.port}")
        with pytest.raises(grpc.RpcError) as info:
            plain.latest(timeout_s=3)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_flipped_byte_is_detected_and_the_fetch_retried(server):
    state = _state(2)
    server.publish(1, state)
    client = WeightClient(server.address)
    manifest = client.latest()
    server.corrupt_next_fetch()
    with pytest.raises(WeightCorruption, match="sha256 mismatch"):
        client.fetch_once(manifest)
    server.corrupt_next_fetch()
    _assert_equal(client.fetch(manifest, attempts=2), state)  # the retry gets clean bytes


def test_a_truncated_stream_is_corruption(server):
    server.publish(1, _state())
    client = WeightClient(server.address)
    manifest = client.latest()
    del manifest.tensors[-1]  # the manifest now promises fewer bytes than the stream holds
    manifest.tensors[0].nbytes += 2
    with pytest.raises(WeightCorruption):
        client.fetch_once(manifest)


def test_evicted_and_unknown_versions_are_not_found_naming_what_exists(server):
    for v in (1, 2, 3):
        server.publish(v, _state(v))
    assert server.versions == [2, 3]
    client = WeightClient(server.address)
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
    follower = WeightFollower(WeightClient(server.address), lambda t, v: applied.append(v)).start()
    assert _until(lambda: follower.pending() is not None)
    assert follower.sync() and follower.version == 1
    server.stop(grace=0)
    assert follower.sync() is False and follower.version == 1  # nothing new; generation goes on
    server = WeightServer(port=port, chunk_bytes=CHUNK).start()  # back on the same address
    try:
        server.publish(2, _state(2))
        server.publish(3, _state(3))
        assert _until(lambda: follower.pending() is not None and follower.pending().version == 3, 15)
        assert follower.sync() and follower.version == 3
        assert applied == [1, 3]
    finally:
        follower.stop()
        server.stop(grace=0)


def _until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False
