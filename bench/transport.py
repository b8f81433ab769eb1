"""Transport: encode + XADD + XREADGROUP + decode of realistic rollout groups, against a
bare redis-py XADD / XREADGROUP / XACK loop moving payloads of the same sizes.

Groups: G=8 samples of 1k–4k tokens each, with int32 ids and float32 log-probs.
"""

from __future__ import annotations

import dataclasses
import tempfile
import uuid

import numpy as np
from prometheus_client import CollectorRegistry

from bench.common import Figure, Scale, interleaved, pinned, rate
from core.codec import encode_group
from core.records import RolloutGroup, Sample
from learner.replay import ReplayBuffer, ReplaySettings
from services.metrics import ReplayMetrics
from services.transport.redis_client import connect
from services.transport.redis_server import EmbeddedRedis
from services.transport.streams import Keys, publish_group

GROUP_SIZE = 8


def make_groups(n: int, run: str, tokens: tuple[int, int], seed: int = 0) -> list[RolloutGroup]:
    rng = np.random.default_rng(seed)
    groups = []
    for i in range(n):
        samples = []
        for _ in range(GROUP_SIZE):
            length = int(rng.integers(tokens[0], tokens[1] + 1))
            samples.append(Sample(
                ids=rng.integers(0, 150_000, length).astype(np.int32),
                logprobs=-rng.exponential(1.0, length).astype(np.float32),
                reward=float(rng.integers(0, 2)), success=bool(rng.integers(0, 2)), finish="stop",
                text="x" * (length * 3)))
        groups.append(RolloutGroup(
            run=run, group_id=uuid.uuid4().hex, prompt_id=f"p{i % 64}", task="math", actor="bench",
            created=0.0, policy_version=0, prompt=f"problem {i}",
            prompt_ids=rng.integers(0, 150_000, 200).astype(np.int32), answer="42",
            samples=tuple(samples)))
    return groups


def _hsd_pass(replay: ReplayBuffer, groups: list[RolloutGroup]) -> float:
    for g in groups:  # new ids each pass: the replay drops a group id it has trained
        publish_group(replay.client, replay.keys, dataclasses.replace(g, group_id=uuid.uuid4().hex))
    batch = replay.next_batch(0, timeout_s=60)
    replay.commit(batch)  # acknowledged entries are deleted: the stream is empty again
    return float(len(batch))


def _bare_pass(client, payloads: list[bytes], stream: str) -> float:
    client.xgroup_create(stream, "g", id="0", mkstream=True)
    for p in payloads:
        client.xadd(stream, {b"r": p})
    got = 0
    while got < len(payloads):
        reply = client.xreadgroup("g", "c", {stream: ">"}, count=64)
        entries = reply[0][1]
        client.xack(stream, "g", *[e for e, _ in entries])
        got += len(entries)
    client.delete(stream)
    return float(got)


def measure(server_url: str, n_groups: int, tokens: tuple[int, int], repeats: int) -> tuple[float, float, float]:
    """(ours groups/s, bare groups/s, MB per group)."""
    client = connect(server_url)
    groups = make_groups(n_groups, "bench", tokens)
    payloads = [encode_group(g) for g in groups]
    mb_per_group = sum(map(len, payloads)) / len(payloads) / 1e6
    counter = iter(range(10**9))
    replay = ReplayBuffer(client, Keys("bench"),
                          ReplaySettings(batch_groups=len(groups), vocab_size=150_000),
                          metrics=ReplayMetrics(CollectorRegistry()), consumer="bench")
    ours, bare = interleaved(
        lambda: rate(lambda: _hsd_pass(replay, groups)),
        lambda: rate(lambda: _bare_pass(client, payloads, f"bare{next(counter)}")),
        repeats,
    )
    client.close()
    return ours, bare, mb_per_group


def run(scale: Scale = Scale.QUICK) -> list[Figure]:
    n, repeats = {Scale.SMOKE: (8, 1), Scale.QUICK: (64, 15), Scale.FULL: (256, 21)}[scale]
    figures = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(tmp) as server, pinned(server.pid):
        ours, bare, mb = measure(server.url, n, (1000, 4000), repeats)
        figures.append(Figure("transport_groups_per_s", ours, bare, ">= 0.7", "groups/s",
                              f"G=8, 1k-4k tokens/sample, {mb:.2f} MB/group"))
        figures.append(Figure("transport_mb_per_s", ours * mb, bare * mb, ">= 0.7", "MB/s"))
        if scale is Scale.FULL:
            for lo, hi in ((100, 400), (4000, 16000)):
                ours, bare, mb = measure(server.url, n, (lo, hi), repeats)
                figures.append(Figure(f"transport_mb_per_s_{lo}-{hi}tok", ours * mb, bare * mb,
                                      ">= 0.7", "MB/s", f"{mb:.2f} MB/group"))
    return figures


if __name__ == "__main__":
    from bench.common import table

    print(table(run()))
