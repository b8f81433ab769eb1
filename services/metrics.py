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


SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ActorMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.groups = Counter("hsd_actor_groups", "Rollout groups written", registry=registry)
        self.samples = Counter("hsd_actor_samples", "Samples generated", registry=registry)
        self.tokens = Counter("hsd_actor_tokens", "Response tokens generated", registry=registry)
        self.generate_seconds = Histogram(
            "hsd_actor_generate_seconds", "Wall time of one generation batch", buckets=SECONDS,
            registry=registry)
        self.reward = Histogram(
            "hsd_actor_reward", "Verifier reward per sample", buckets=(0, 0.25, 0.5, 0.75, 1.0),
            registry=registry)
        self.policy_version = Gauge(
            "hsd_actor_policy_version", "Version of the weights the actor generates with",
            registry=registry)
        self.weight_sync_seconds = Histogram(
            "hsd_actor_weight_sync_seconds", "Fetch + verify + load of a new weight version",
            buckets=SECONDS, registry=registry)
        self.paused = Gauge(
            "hsd_actor_backpressure_paused", "1 while the actor waits for the rollout stream to drain",
            registry=registry)
        self.rejected_prompts = Counter(
            "hsd_actor_rejected_prompts", "Malformed prompt entries dead-lettered", registry=registry)
