"""One benchmark client process: ``python -m bench.weights_fetch MODE ADDRESS [NBYTES]``.

MODE: ``bulk`` (fetch + assemble + sha256 verify over the bulk channel, as actors do),
``bulk-raw`` (the same parallel bulk ranges, not verified), ``grpc`` (fetch + verify over
the gRPC Fetch streams, the fallback path), ``tcp`` (a bare socket), ``tcp-sha256`` (a bare
socket, then one sha256 over the bytes: the same work as verifying). The process prints
``ready`` once set up, waits for a line on stdin so that concurrent clients start
together, then prints {"start", "end", "bytes"} (unix seconds).

Every mode is timed in the steady state of an actor: one untimed transfer first, the timed
one second. The first transfer of a process runs at about half speed here whatever the
mode (first-touch costs in the kernel and the receive buffer), and an actor fetches a new
version at every step. Weight clients receive into the buffer they released after the
first fetch, as an actor's follower does; the bare and raw clients into one buffer of the
same kind (a torch allocation: 2 MiB-aligned, so huge pages where the kernel has them).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable

import torch


def _bare(address: str, view: memoryview, sha256: bool) -> Callable[[], None]:
    host, port = address.rsplit(":", 1)

    def transfer() -> None:
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"g")
            got = 0
            while got < len(view):
                n = sock.recv_into(view[got:], min(4 << 20, len(view) - got))
                if not n:
                    raise ConnectionError(f"short read: {got} of {len(view)}")
                got += n
        if sha256:
            hashlib.sha256(view).digest()

    return transfer


def _weights(mode: str, address: str) -> tuple[Callable[[], None], int]:
    from services.proto_gen.hsd.v1 import weights_pb2 as pb
    from services.weights.bulk import receive_range, split
    from services.weights.client import WeightClient

    client = WeightClient(address, bulk=mode != "grpc")
    manifest = client.latest()
    nbytes = manifest.total_bytes
    if mode != "bulk-raw":
        def fetch() -> None:
            client.fetch_once(manifest)
            assert client.bulk == (mode == "bulk"), "the bulk channel was not used"
            client.release()

        return fetch, nbytes
    view = memoryview(torch.empty(nbytes, dtype=torch.uint8).numpy())
    host = address.rsplit(":", 1)[0]

    def raw() -> None:
        threads = [threading.Thread(target=receive_range, args=(
            host, manifest.bulk_port, pb.BulkRequest(version=manifest.version, offset=a, length=n),
            view[a : a + n], lambda *_: None)) for a, n in split(nbytes, min(4, os.cpu_count() or 1))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    return raw, nbytes


def main() -> None:
    mode, address = sys.argv[1], sys.argv[2]
    if mode.startswith("tcp"):
        nbytes = int(sys.argv[3])
        transfer = _bare(address, memoryview(torch.empty(nbytes, dtype=torch.uint8).numpy()), mode == "tcp-sha256")
    else:
        transfer, nbytes = _weights(mode, address)
    transfer()  # untimed: the steady state is what an actor sees at every version
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.time()
    transfer()
    print(json.dumps({"start": start, "end": time.time(), "bytes": nbytes}), flush=True)


if __name__ == "__main__":
    main()
