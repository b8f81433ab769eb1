"""The learner's replay buffer: rollout stream ──► validated, peer-tagged batches.

Group lifecycle (the learner's side of the rollout stream)::

    XADD by an actor
      └─► read (pending in Redis, owned by this consumer)
            ├─ malformed, or beyond the run's limits (G, lengths, reward and log-prob
            │  ranges: core.codec.check_limits) ─► dead-lettered with its reason + raw bytes; acked
            ├─ duplicate (its group id is buffered, in a batch, or trained) ─► dropped; acked
            ├─ stale (v − v_b > η), future (v_b > v) or lost (v_b published by a
            │  crashed learner after its last checkpoint) ─► dropped, counted by reason; acked
            └─ decoded, peer-tagged ─► buffered ──next_batch()──► in a batch
                                                                    ├─ no sample can be made of it:
                                                                    │  reject_unusable(): dead-lettered
                                                                    ├─ commit() once the step is
                                                                    │  durable: acked + deleted, its
                                                                    │  id added to the trained set
                                                                    └─ (crash) still pending in Redis:
                                                                       re-read on restart

State lives in Redis (pending entries, peer bank, the trained set, drop counts), so a
restarted learner loses nothing, trains nothing committed twice, and the run's accounting
(generated = trained + dropped + in flight) holds across restarts.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from dataclasses import dataclass

import msgpack
import numpy as np
import redis

from core.codec import GroupLimits, Reason, RecordRejected, check_limits, decode_group, encode_group
from core.config import Config
from core.records import RolloutGroup
from learner.staleness import Drop, drop_reason
from methods import METHODS
from methods.peers import CarriedPeer, PeerSource, PeerTag, assign_peers
from services.metrics import ReplayMetrics
from services.transport.streams import (
    LEARNER_GROUP,
    ROLLOUT_FIELD,
    Keys,
    StreamConsumer,
    dead_letter,
    stream_lag,
)

log = logging.getLogger(__name__)
BANK_TTL_S = 7 * 24 * 3600


@dataclass
class TaggedGroup:
    entry_id: bytes  # rollout stream entry, acknowledged on commit
    group: RolloutGroup
    tags: list[PeerTag]  # one per sample: its peer, or why none


@dataclass
class ReplaySettings:
    batch_groups: int = 4  # B
    max_staleness: int = 1  # η
    vocab_size: int | None = None
    max_record_bytes: int = 64 << 20
    peer_strategy: str = "random"
    peer_fallback: str = "answer"
    peer_bank_size: int = 4
    peer_bank_max_age: int = 4  # versions
    seed: int = 0
    tag_peers: bool = True  # the method reads peers (methods.base.Method.wants_peers)
    limits: GroupLimits = GroupLimits()

    @classmethod
    def from_config(cls, config: Config, vocab_size: int | None) -> ReplaySettings:
        a = config.algorithm
        return cls(
            batch_groups=config.learner.batch_groups,
            max_staleness=config.learner.max_staleness,
            vocab_size=vocab_size,
            max_record_bytes=config.redis.max_record_bytes,
            peer_strategy=a.peer_strategy,
            peer_fallback=a.peer_fallback,
            peer_bank_size=a.peer_bank_size,
            peer_bank_max_age=a.peer_bank_max_age,
            seed=config.run.seed,
            tag_peers=METHODS[a.method].wants_peers,
            limits=GroupLimits(group_size=config.actor.group_size, max_prompt_tokens=config.model.max_prompt_tokens,
                               max_response_tokens=config.model.max_response_tokens),
        )


class PeerBank:
    """Recent successful rollouts per prompt, newest first, bounded in count and age."""

    def __init__(self, client: redis.Redis, keys: Keys, size: int, max_age: int) -> None:
        self.client, self.keys, self.size, self.max_age = client, keys, size, max_age

    def latest(self, prompt_id: str, version: int) -> CarriedPeer | None:
        for raw in self.client.lrange(self.keys.peers(prompt_id), 0, self.size - 1):
            m = msgpack.unpackb(raw, raw=False)
            if version - m["policy_version"] <= self.max_age:
                return CarriedPeer(np.frombuffer(m["ids"], "<i4"), m["text"], m["group_id"],
                                  m["policy_version"])
        return None

    def add(self, group: RolloutGroup, pipe: redis.client.Pipeline) -> None:
        key = self.keys.peers(group.prompt_id)
        winners = [s for s in group.samples if s.success]
        for s in winners:
            pipe.lpush(key, msgpack.packb({
                "ids": s.ids.astype("<i4").tobytes(), "text": s.text,
                "group_id": group.group_id, "policy_version": group.policy_version,
            }, use_bin_type=True))
        if winners:
            pipe.ltrim(key, 0, self.size - 1)
            pipe.expire(key, BANK_TTL_S)


class ReplayBuffer:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        settings: ReplaySettings,
        *,
        metrics: ReplayMetrics | None = None,
        consumer: str = "learner-0",
    ) -> None:
        self.client = client
        self.keys = keys
        self.s = settings
        self.metrics = metrics or ReplayMetrics()
        # the learner is the group's only consumer: it adopts what is pending at start and
        # never auto-claims (see StreamConsumer)
        self.consumer = StreamConsumer(client, keys.rollouts, LEARNER_GROUP, consumer, claim_idle_ms=None)
        self.bank = PeerBank(client, keys, settings.peer_bank_size, settings.peer_bank_max_age)
        self.buffer: deque[TaggedGroup] = deque()
        self.held: set[str] = set()  # group ids buffered or in a batch, not yet committed
        # [lo, hi] version ranges whose weights no longer exist (see learner.service.Learner.start)
        self.lost_versions: list[tuple[int, int]] = []

    # ------------------------------------------------------------------ ingest

    def poll(self, version: int, block_ms: int | None = None, count: int = 64) -> int:
        """Read what is available (blocking up to ``block_ms`` if nothing is); returns the
        number of groups buffered."""
        entries = self.consumer.read(count, block_ms)
        decoded: list[tuple[bytes, RolloutGroup]] = []
        for entry_id, fields in entries:
            raw = fields.get(ROLLOUT_FIELD)
            try:
                if raw is None:
                    raise RecordRejected(Reason.MISSING_FIELD, f"entry has no field {ROLLOUT_FIELD!r}")
                group = decode_group(
                    raw, vocab_size=self.s.vocab_size, max_bytes=self.s.max_record_bytes,
                    run=self.keys.run,
                )
                check_limits(group, self.s.limits)
            except RecordRejected as err:
                self._reject(entry_id, raw or b"", err)
                continue
            decoded.append((entry_id, group))
        trained = self.client.smismember(self.keys.trained, [g.group_id for _, g in decoded]) if decoded else []
        buffered = 0
        for (entry_id, group), seen in zip(decoded, trained, strict=True):
            reason = "duplicate" if seen or group.group_id in self.held else self._drop_reason(group, version)
            if reason is not None:
                self._acknowledge([entry_id], reason)
                continue
            self.buffer.append(TaggedGroup(entry_id, group, self._tag(group, version)))
            self.held.add(group.group_id)
            self.metrics.groups_ingested.inc()
            buffered += 1
        self._observe()
        return buffered

    def _drop_reason(self, group: RolloutGroup, version: int) -> Drop | None:
        return drop_reason(version, group.policy_version, self.s.max_staleness, self.lost_versions)

    def _tag(self, group: RolloutGroup, version: int) -> list[PeerTag]:
        if not self.s.tag_peers:
            return [PeerTag(PeerSource.NONE) for _ in group.samples]
        bank = None
        if self.s.peer_fallback == "bank":
            bank = self.bank.latest(group.prompt_id, version)
            pipe = self.client.pipeline(transaction=False)
            self.bank.add(group, pipe)  # after the lookup: a group never banks itself
            pipe.execute()
        return assign_peers(
            [s.success for s in group.samples],
            [len(s.ids) for s in group.samples],
            strategy=self.s.peer_strategy,
            fallback=self.s.peer_fallback,
            has_answer=group.answer is not None,
            bank=bank,
            rng=random.Random(f"{self.s.seed}:{group.content_key}"),
        )

    def reject_unusable(self, t: TaggedGroup, err: Exception) -> None:
        """A batched group no training sample could be made of: dead-lettered (reason
        ``unusable``, the error as detail) instead of stopping the learner."""
        self.held.discard(t.group.group_id)
        self._reject(t.entry_id, bytes(encode_group(t.group)),
                     RecordRejected(Reason.UNUSABLE, f"{type(err).__name__}: {err}"))

    def _reject(self, entry_id: bytes, raw: bytes, err: RecordRejected) -> None:
        log.warning("dead-lettering rollout entry %s: %s", entry_id.decode(), err)
        pipe = self.client.pipeline(transaction=True)
        dead_letter(self.client, self.keys, self.keys.rollouts, entry_id, raw,
                    err.reason.value, err.detail, pipe)
        self._acknowledge([entry_id], "malformed", pipe)

    def _acknowledge(self, ids: list[bytes], reason: str | None, pipe=None) -> None:
        """Ack + delete and count the drop in Redis (in one MULTI with whatever ``pipe``
        holds: a crash leaves neither or both), and in the process's metric."""
        pipe = self.client.pipeline(transaction=True) if pipe is None else pipe
        self.consumer.ack(ids, pipe)
        if reason is not None:
            pipe.hincrby(self.keys.dropped, reason, len(ids))
        pipe.execute()
        if reason is not None:
            self.metrics.dropped.labels(reason).inc(len(ids))

    def run_totals(self) -> tuple[int, dict[str, int]]:
        """Groups trained and committed, and groups dropped by reason, over the run's whole
        life (every learner that served it): they survive kill -9 and resume."""
        pipe = self.client.pipeline(transaction=False)
        pipe.scard(self.keys.trained)
        pipe.hgetall(self.keys.dropped)
        trained, dropped = pipe.execute()
        return int(trained), {k.decode(): int(v) for k, v in sorted(dropped.items())}

    # ------------------------------------------------------------------ batches

    def next_batch(self, version: int, timeout_s: float = 10.0) -> list[TaggedGroup] | None:
        """B groups within the staleness bound at ``version``, or None after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._drop_stale(version)
            if len(self.buffer) >= self.s.batch_groups:
                # first come, first batched; inside the batch an order that arrival does not set
                batch = sorted((self.buffer.popleft() for _ in range(self.s.batch_groups)),
                               key=lambda t: t.group.content_key)
                self._observe_batch(batch, version)
                return batch
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.poll(version, block_ms=max(1, int(min(remaining, 1.0) * 1000)))

    def _drop_stale(self, version: int) -> None:
        fresh: deque[TaggedGroup] = deque()
        dropped: dict[Drop, list[bytes]] = {}
        for t in self.buffer:
            reason = self._drop_reason(t.group, version)
            if reason is None:
                fresh.append(t)
            else:
                dropped.setdefault(reason, []).append(t.entry_id)
                self.held.discard(t.group.group_id)
        self.buffer = fresh
        for reason, ids in dropped.items():
            self._acknowledge(ids, reason)

    def commit_recovered(self, committed: list[list[str]]) -> None:
        """At resume: the groups (entry id, group id) the checkpoint's weights already trained
        on, committed as :meth:`commit` would have (idempotent: a group committed before the
        crash is acked and in the trained set already)."""
        if not committed:
            return
        pipe = self.client.pipeline(transaction=True)
        pipe.sadd(self.keys.trained, *[group_id for _, group_id in committed])
        self._acknowledge([entry_id.encode() for entry_id, _ in committed], None, pipe)

    def commit(self, batch: list[TaggedGroup]) -> None:
        """Once the optimiser step that used ``batch`` is durable: ack and delete, and
        remember the group ids as trained (one transaction: a crash leaves both undone)."""
        if not batch:
            return
        pipe = self.client.pipeline(transaction=True)
        pipe.sadd(self.keys.trained, *[t.group.group_id for t in batch])
        self._acknowledge([t.entry_id for t in batch], None, pipe)
        self.held.difference_update(t.group.group_id for t in batch)
        self._observe()

    # ------------------------------------------------------------------ metrics

    def _observe(self) -> None:
        self.metrics.buffered_groups.set(len(self.buffer))
        for name, key in (("prompts", self.keys.prompts), ("rollouts", self.keys.rollouts)):
            self.metrics.queue_lag.labels(name).set(stream_lag(self.client, key))

    def _observe_batch(self, batch: list[TaggedGroup], version: int) -> None:
        tags = [tag for t in batch for tag in t.tags]
        with_peer = sum(tag.source in (PeerSource.GROUP, PeerSource.BANK) for tag in tags)
        self.metrics.peer_coverage.set(with_peer / len(tags) if tags else 0.0)
        for t in batch:
            self.metrics.batch_staleness.observe(version - t.group.policy_version)
        self._observe()

