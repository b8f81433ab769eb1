"""One benchmark client process: ``python -m bench.weights_fetch MODE ADDRESS [NBYTES]``.

MODE: ``grpc`` (fetch + assemble + sha256 verify), ``grpc-raw`` (the same streams, bytes
assembled but not verified), ``tcp`` (a bare socket). The process prints ``ready`` once
connected, waits for a line on stdin so that concurrent clients start together, then
prints {"start", "end", "bytes"} (unix seconds).
"""

from __future__ import annotations

import json
import socket
import sys
import time


def main() -> None:
    mode, address = sys.argv[1], sys.argv[2]
    if mode == "tcp":
        nbytes = int(sys.argv[3])
        host, port = address.rsplit(":", 1)
        buf = bytearray(nbytes)
        view = memoryview(buf)
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
    else:
        from services.weights_client import WeightClient, _Assembly
        from services.weights_snapshot import decode_chunk

        client = WeightClient(address)
        manifest = client.latest()
        nbytes = manifest.total_bytes
        print("ready", flush=True)
        sys.stdin.readline()
        start = time.time()
        if mode == "grpc":
            client.fetch_once(manifest)
        else:
            assembly = _Assembly(manifest, ())
            from services.proto_gen.hsd.v1 import weights_pb2 as pb

            for raw in client._fetch_raw(pb.FetchRequest(version=manifest.version)):
                _, offset, data = decode_chunk(raw)
                assembly.view[offset : offset + len(data)] = data
    print(json.dumps({"start": start, "end": time.time(), "bytes": nbytes}), flush=True)


if __name__ == "__main__":
    main()
