"""The committed gRPC stubs match what proto/ generates now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services.proto_gen.hsd.v1 import weights_pb2 as pb
from services.weights.snapshot import encode_chunk

ROOT = Path(__file__).resolve().parents[3]
GENERATED = ["weights_pb2.py", "weights_pb2.pyi", "weights_pb2_grpc.py"]


def test_committed_stubs_are_not_stale(tmp_path):
    subprocess.run(["bash", str(ROOT / "scripts" / "gen-proto"), str(tmp_path)], check=True,
                   cwd=ROOT, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    for name in GENERATED:
        fresh = (tmp_path / "services" / "proto_gen" / "hsd" / "v1" / name).read_text()
        committed = (ROOT / "services" / "proto_gen" / "hsd" / "v1" / name).read_text()
        assert fresh == committed, f"{name} is stale: run `make proto` and commit the result"


def test_hand_encoded_chunk_is_the_protobuf_encoding():
    for data in (b"", b"x", bytes(range(256)) * 700):
        for version, offset in ((0, 0), (7, 1), (2**40, 4 << 20)):
            msg = pb.Chunk(version=version, offset=offset, data=data)
            assert encode_chunk(version, offset, data) == msg.SerializeToString()
            assert pb.Chunk.FromString(encode_chunk(version, offset, memoryview(data))) == msg
