"""Weight publication: a bf16 state dict fetched (assembled + sha256-verified) by 1 and by
4 concurrent client processes from the weight service on loopback (its bulk channel, as
actors fetch; and its gRPC Fetch streams, the fallback), against a bare TCP socket moving
the same bytes to the same number of client processes, measured in the same run.

Also: the same against bare-socket clients that sha256 what they received (the same work
as verifying), and the publisher's CPU seconds per GB sent with 1 and with 4 clients (it
must not grow with the number of clients beyond the bytes it sends).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

import torch

from bench.common import Figure, Scale
from services.weights.server import WeightServer
from services.weights.snapshot import tensor_bytes

GB = 1e9


def make_state(nbytes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Transformer-shaped bf16 tensors adding up to about ``nbytes``."""
    g = torch.Generator().manual_seed(seed)
    hidden = 1024
    per_layer = 12 * hidden * hidden * 2  # q,k,v,o + 3 mlp (4h) in bf16 ≈ 12 h² params
    layers = max(1, nbytes // per_layer)
    state = {}
    for i in range(layers):
        for name, shape in ((f"layers.{i}.attn.qkv", (3 * hidden, hidden)),
                            (f"layers.{i}.attn.o", (hidden, hidden)),
                            (f"layers.{i}.mlp.up", (8 * hidden, hidden)),
                            (f"layers.{i}.norm", (hidden,))):
            state[name] = torch.randint(-2**15, 2**15, shape, dtype=torch.int16, generator=g).view(torch.bfloat16)
    return state


def _clients(args: list[list[str]]) -> tuple[list[dict], float]:
    """Start one process per client, wait until all are connected, then release them
    together so that their transfers overlap. Returns their reports and this process's CPU
    seconds from the release to the end (a client's untimed warm-up fetch is not in it)."""
    # the repository first, then whatever the caller's environment already relies on
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)}
    procs = [subprocess.Popen([sys.executable, "-m", "bench.weights_fetch", *a], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env) for a in args]
    for p in procs:
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("bench client did not connect")
    cpu = time.process_time()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=600)
        if p.returncode:
            raise RuntimeError(f"bench client failed with {p.returncode}")
        out.append(json.loads(stdout))
    return out, time.process_time() - cpu


class _TcpSender:
    """A bare TCP server that sends one flat buffer to every connection."""

    def __init__(self, payload: memoryview) -> None:
        self.payload = payload
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._send, args=(conn,), daemon=True).start()

    def _send(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(1)  # the client's go
            for i in range(0, len(self.payload), 4 << 20):
                conn.sendall(self.payload[i : i + (4 << 20)])

    def close(self) -> None:
        self.sock.close()


def _round(kind: str, address: str, n: int, nbytes: int) -> tuple[float, float, float]:
    """(per-client GB/s, aggregate GB/s, publisher CPU seconds per GB sent)."""
    args = [[kind, address] + ([str(nbytes)] if kind.startswith("tcp") else []) for _ in range(n)]
    results, cpu = _clients(args)
    per_client = sum(r["bytes"] / (r["end"] - r["start"]) for r in results) / n / GB
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    return per_client, n * nbytes / span / GB, cpu / (n * nbytes / GB)


def _rounds(kinds: dict[str, str], n: int, nbytes: int, repeats: int) -> dict[str, tuple[float, ...]]:
    """The median of ``repeats`` rounds of each kind (kind -> address), the order of kinds
    rotating from one repetition to the next so that drift favours none."""
    runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
    order = list(kinds)
    for i in range(repeats):
        for kind in order[i % len(order):] + order[: i % len(order)]:
            runs[kind].append(_round(kind, kinds[kind], n, nbytes))
    return {k: tuple(statistics.median(col) for col in zip(*r, strict=True)) for k, r in runs.items()}


def run(scale: Scale = Scale.QUICK) -> list[Figure]:
    sizes = {Scale.SMOKE: [int(0.02 * GB)], Scale.QUICK: [int(0.25 * GB)],
             Scale.FULL: [int(0.5 * GB), int(1.2 * GB)]}[scale]
    repeats = 1 if scale is Scale.SMOKE else 3
    figures = []
    for size in sizes:
        state = make_state(size)
        flat = memoryview(bytearray(b"".join(bytes(tensor_bytes(t)) for t in state.values())))
        nbytes = len(flat)
        label = f"{nbytes / GB:.2f}GB"
        with WeightServer(port=0, keep=1, max_workers=16) as server:
            start = time.perf_counter()
            server.publish(1, state)
            publish_s = time.perf_counter() - start
            tcp = _TcpSender(flat)
            try:
                cpu_per_gb = {}
                for n in (1, 4):
                    kinds = {"bulk": server.address, "bulk-raw": server.address, "tcp": tcp.address,
                             "tcp-sha256": tcp.address} | ({"grpc": server.address} if n == 1 else {})
                    m = _rounds(kinds, n, nbytes, repeats)
                    cpu_per_gb[n] = m["bulk"][2]
                    figures.append(Figure(f"weights_{label}_{n}client_transfer_only_gb_s", m["bulk-raw"][0],
                                          m["tcp"][0], ">= 0.6", "GB/s",
                                          "the same bulk ranges without sha256 verification"))
                    figures.append(Figure(f"weights_{label}_{n}client_per_client_gb_s", m["bulk"][0], m["tcp"][0],
                                          ">= 0.6", "GB/s", "fetch + assemble + sha256 verify"))
                    figures.append(Figure(f"weights_{label}_{n}client_aggregate_gb_s", m["bulk"][1], m["tcp"][1],
                                          ">= 0.6", "GB/s"))
                    figures.append(Figure(f"weights_{label}_{n}client_aggregate_vs_tcp_sha256_gb_s", m["bulk"][1],
                                          m["tcp-sha256"][1], ">= 0.6", "GB/s",
                                          "baseline: the bare socket's clients also sha256 the bytes"))
                    if "grpc" in m:
                        figures.append(Figure(f"weights_{label}_1client_grpc_fallback_gb_s", m["grpc"][0],
                                              m["tcp"][0], ">= 0.6", "GB/s", "fetch + verify over gRPC Fetch "
                                              "streams, for clients that cannot reach the bulk port"))
                figures.append(Figure(f"weights_{label}_publisher_cpu_per_gb_4_vs_1_clients",
                                      cpu_per_gb[4], cpu_per_gb[1], "<= 1.25", "CPU s/GB",
                                      f"publish (snapshot + sha256) took {publish_s:.2f}s once"))
            finally:
                tcp.close()
        del state, flat
    return figures


if __name__ == "__main__":
    from bench.common import table

    print(table(run(Scale.FULL if "--full" in sys.argv else Scale.QUICK)))
