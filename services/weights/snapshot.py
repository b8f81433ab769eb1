"""Immutable weight snapshots: a state dict flattened once into ready-to-send chunks.

``Snapshot.build`` lays the tensors' bytes (each in its own dtype: bf16 stays bf16) out
as one flat byte range, hashes each tensor (sha256, the tensors in parallel threads:
hashlib releases the GIL), and serializes the range's ≤ chunk_bytes pieces *once* as
``hsd.v1.Chunk`` messages, copying each byte once, straight from the tensors into its
message. Every Fetch stream of every client then yields the same bytes objects: the
publisher's cost does not grow with the number of clients beyond handing the same
buffers to gRPC.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from services.proto_gen.hsd.v1 import weights_pb2 as pb

CHUNK_FIELD_TAG = b"\x1a"  # field 3 (data), wire type 2 (length-delimited)


def read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """(value, next position) of the base-128 varint at ``pos``."""
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def decode_chunk(raw: bytes) -> tuple[int, int, memoryview]:
    """(version, offset, data) of a serialized Chunk; ``data`` is a view into ``raw``, not
    a copy. Accepts any field order and skips unknown varint/length-delimited fields."""
    buf = memoryview(raw)
    version = offset = 0
    data = buf[0:0]
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
            if field == 1:
                version = value
            elif field == 2:
                offset = value
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated chunk")
            if field == 3:
                data = buf[pos : pos + length]
            pos += length
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return version, offset, data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_chunk(version: int, offset: int, *pieces: bytes | memoryview) -> bytes:
    """The wire form of ``Chunk(version, offset, data)`` with data the pieces joined: one
    copy of each piece."""
    head = pb.Chunk(version=version, offset=offset).SerializeToString()
    size = sum(len(p) for p in pieces)
    if not size:
        return head  # proto3 leaves an empty bytes field out
    return b"".join((head, CHUNK_FIELD_TAG, _varint(size), *pieces))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def _pieces(infos: Sequence[pb.TensorInfo], views: Sequence[memoryview], lo: int, hi: int) -> list[memoryview]:
    """The tensors' bytes that fall in the flat range [lo, hi), in order."""
    out = []
    for info, raw in zip(infos, views, strict=True):
        a, b = max(lo, info.offset), min(hi, info.offset + info.nbytes)
        if b > a:
            out.append(raw[a - info.offset : b - info.offset])
    return out


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The tensor's raw bytes (CPU, contiguous, own dtype) as a flat uint8 view."""
    t = t.detach().to("cpu").contiguous()
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


@dataclass(frozen=True)
class Snapshot:
    version: int
    manifest: pb.Manifest
    chunks: tuple[bytes, ...]  # serialized Chunk messages, in offset order
    chunk_offsets: tuple[int, ...]  # flat offset of each chunk's data
    chunk_bytes: int

    @classmethod
    def build(
        cls, version: int, state_dict: Mapping[str, torch.Tensor], chunk_bytes: int = 4 << 20
    ) -> Snapshot:
        names = list(state_dict)
        views = [tensor_bytes(state_dict[n]) for n in names]
        with ThreadPoolExecutor(max_workers=min(len(views), os.cpu_count() or 1) or 1) as pool:
            digests = list(pool.map(lambda raw: hashlib.sha256(raw).digest(), views))
        infos, offset = [], 0
        for name, raw, digest in zip(names, views, digests, strict=True):
            tensor = state_dict[name]
            infos.append(pb.TensorInfo(name=name, dtype=dtype_name(tensor.dtype), shape=list(tensor.shape),
                                       offset=offset, nbytes=raw.nbytes, sha256=digest))
            offset += raw.nbytes
        starts = tuple(range(0, offset, chunk_bytes))
        chunks = tuple(encode_chunk(version, s, *_pieces(infos, views, s, min(offset, s + chunk_bytes)))
                       for s in starts)
        manifest = pb.Manifest(
            version=version, tensors=infos, total_bytes=offset, published_at=time.time(),
            chunk_bytes=chunk_bytes,
        )
        return cls(version, manifest, chunks, starts, chunk_bytes)

    def iter_chunks(self, names: Sequence[str] = (), start: int = 0, count: int = 0) -> Iterator[bytes]:
        """The shared, prebuilt chunks [start, start + count) (count 0: to the end), or, with
        ``names``, chunks cut to those tensors' byte ranges."""
        if not names:
            stop = len(self.chunks) if count == 0 else min(len(self.chunks), start + count)
            yield from self.chunks[start:stop]
            return
        by_name = {t.name: t for t in self.manifest.tensors}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise KeyError(f"unknown tensors {missing[:5]}")
        for name in names:
            info = by_name[name]
            yield from self._range(info.offset, info.offset + info.nbytes)

    def _range(self, lo: int, hi: int) -> Iterator[bytes]:
        for offset, data in self.views(lo, hi):
            yield encode_chunk(self.version, offset, data)

    def views(self, lo: int, hi: int) -> Iterator[tuple[int, memoryview]]:
        """(flat offset, bytes) pieces of the flat buffer's [lo, hi), in order: views into
        the shared chunk messages, never copies."""
        for i in range(lo // self.chunk_bytes, len(self.chunks)):
            start = self.chunk_offsets[i]
            if start >= hi:
                return
            data = self._data(i)
            a, b = max(lo, start) - start, min(hi, start + len(data)) - start
            if b > a:
                yield start + a, data[a:b]

    def _data(self, i: int) -> memoryview:
        """Chunk i's data: the last ``length`` bytes of its message (data is the last field)."""
        length = min(self.chunk_bytes, self.manifest.total_bytes - self.chunk_offsets[i])
        msg = self.chunks[i]
        return memoryview(msg)[len(msg) - length :]
