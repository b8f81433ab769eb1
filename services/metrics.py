"""Prometheus metrics of each role (DESIGN §4 names), one class per role.

Each class registers its metrics in the registry it is given: a process uses the default
registry (served at /metrics); tests give each instance a fresh ``CollectorRegistry``.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

DROP_REASONS = ("malformed", "stale")


class ReplayMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.groups_ingested = Counter(
            "hsd_replay_groups_ingested", "Rollout groups decoded and accepted into the buffer",
            registry=registry)
        self.dropped = Counter(
            "hsd_replay_dropped", "Rollout groups dropped, by reason", ["reason"], registry=registry)
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        self.buffered_groups = Gauge(
            "hsd_replay_buffered_groups", "Groups decoded and waiting for a batch", registry=registry)
        self.peer_coverage = Gauge(
            "hsd_replay_peer_coverage",
            "Fraction of samples in the last batch with a successful peer (group or bank)",
            registry=registry)
        self.queue_lag = Gauge(
            "hsd_queue_lag_entries", "Stream entries undelivered or in progress", ["stream"],
            registry=registry)
        self.batch_staleness = Histogram(
            "hsd_replay_batch_staleness_versions", "v − v_b of the groups handed out in batches",
            buckets=(0, 1, 2, 3, 4, 6, 8, 16), registry=registry)
