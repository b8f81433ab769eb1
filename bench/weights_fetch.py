"""One benchmark client process: ``python -m bench.weights_fetch MODE ADDRESS [NBYTES]``.

MODE: ``bulk`` (fetch + assemble + sha256 verify over the bulk channel, as actors do),
``bulk-raw`` (the same parallel bulk ranges, not verified), ``grpc`` (fetch + verify over
the gRPC Fetch streams, the fallback path), ``tcp`` (a bare socket), ``tcp-sha256`` (a bare
socket, then one sha256 over the bytes: the same work as verifying). The process prints
``ready`` once connected, waits for a line on stdin so that concurrent clients start
together, then prints {"start", "end", "bytes"} (unix seconds).

Each client is timed in the steady state of an actor: its receive buffer exists already
(the TCP client's allocated and touched, a weight client's released by one untimed fetch
before, as an actor releases each version's buffer once the model has the weights).
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import time


def main() -> None:
    mode, address = sys.argv[1], sys.argv[2]
    if mode.startswith("tcp"):
        nbytes = int(sys.argv[3])
        host, port = address.rsplit(":", 1)
        view = memoryview(bytearray(nbytes))
        sock = socket.create_connection((host, int(port)))
        print("ready", flush=True)
        sys.stdin.readline()
        start = time.time()
        sock.sendall(b"g")
        got = 0
        while got < nbytes:
            n = sock.recv_into(view[got:], min(4 << 20, nbytes - got))
            if not n:
                raise ConnectionError(f"short read: {got} of {nbytes}")
            got += n
        sock.close()
        if mode == "tcp-sha256":
            hashlib.sha256(view).digest()
    else:
        import os
        import threading

        from services.proto_gen.hsd.v1 import weights_pb2 as pb
        from services.weights_bulk import receive_range, split
        from services.weights_client import WeightClient

        client = WeightClient(address, bulk=mode != "grpc")
        manifest = client.latest()
        nbytes = manifest.total_bytes
        client.fetch_once(manifest)
        client.release()
        view = memoryview(client._spare)
        print("ready", flush=True)
        sys.stdin.readline()
        start = time.time()
        if mode == "bulk-raw":
            threads = [threading.Thread(target=receive_range, args=(
                address.rsplit(":", 1)[0], manifest.bulk_port,
                pb.BulkRequest(version=manifest.version, offset=a, length=n), view[a : a + n],
                lambda *_: None)) for a, n in split(nbytes, min(4, os.cpu_count() or 1))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            client.fetch_once(manifest)
            assert client.bulk == (mode == "bulk"), "the bulk channel was not used"
    print(json.dumps({"start": start, "end": time.time(), "bytes": nbytes}), flush=True)


if __name__ == "__main__":
    main()
