"""Redis streams between the roles: keys, at-least-once consumers, hand-off, admission.

Keys of a run::

    hsd:{run}:prompts     stream, consumer group `actors`   (field p: PromptItem)
    hsd:{run}:rollouts    stream, consumer group `learner`  (field r: RolloutGroup)
    hsd:{run}:deadletter  stream of rejected entries        (reason, detail, raw, source)
    hsd:{run}:peers:{id}  list, the peer bank of one prompt
    hsd:{run}:state       hash: version, published (the newest version the weight service serves), weights
                          address, config hash, status (running|stopped|done), lost versions, groups generated
    hsd:{run}:actors      hash: actor id -> weight version it generates with
    hsd:{run}:actor_metrics  hash: actor id -> its /metrics URL (hsd top finds joined actors)

An entry is deleted once it is acknowledged, so a stream holds exactly the work that is
undelivered or in progress: XLEN is the lag, and nothing that still matters is trimmed.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import redis

from core.codec import encode_group, encode_prompt
from core.records import PromptItem, RolloutGroup

log = logging.getLogger(__name__)

ACTORS_GROUP = "actors"
LEARNER_GROUP = "learner"
PROMPT_FIELD = b"p"
ROLLOUT_FIELD = b"r"
GENERATED = "generated"  # state-hash field: groups actors have written
DEADLETTER_MAXLEN = 100_000  # rejected entries are kept for inspection, not as work


@dataclass(frozen=True)
class Keys:
    run: str

    @property
    def prompts(self) -> str:
        return f"hsd:{self.run}:prompts"

    @property
    def rollouts(self) -> str:
        return f"hsd:{self.run}:rollouts"

    @property
    def deadletter(self) -> str:
        return f"hsd:{self.run}:deadletter"

    @property
    def state(self) -> str:
        return f"hsd:{self.run}:state"

    @property
    def actors(self) -> str:
        return f"hsd:{self.run}:actors"

    @property
    def actor_metrics(self) -> str:
        return f"hsd:{self.run}:actor_metrics"

    def peers(self, prompt_id: str) -> str:
        return f"hsd:{self.run}:peers:{prompt_id}"

    @property
    def trained(self) -> str:
        """Set of the group ids the learner has trained on and committed."""
        return f"hsd:{self.run}:trained"

    @property
    def dropped(self) -> str:
        """Hash: drop reason -> groups dropped for it, over the run's whole life."""
        return f"hsd:{self.run}:dropped"


Entry = tuple[bytes, dict[bytes, bytes]]  # (entry id, fields)


class StreamConsumer:
    """One consumer of a consumer group, with at-least-once delivery.

    Entry lifecycle::

        XADD ──► new ──read()──► pending (owned by this consumer) ──ack()──► acked + deleted
                                    │ owner dies; idle > claim_idle_ms
                                    └──read() of another consumer (XAUTOCLAIM) ──► pending (new owner)

    One of many (actors, ``claim_idle_ms`` set): a consumer restarted under the same name
    first re-reads its own pending entries, and from then on also takes over entries idle
    longer than ``claim_idle_ms`` (a dead peer's), then new ones.

    The only one (the learner, ``claim_idle_ms=None``): at start it adopts every pending
    entry of the group, whoever held it (a previous learner under any name), and never
    auto-claims afterwards — it must not take back entries it holds itself while they wait
    for a checkpoint.
    """

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        group: str,
        consumer: str,
        *,
        claim_idle_ms: int | None = 60_000,
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms
        self._recovering = True  # first: what was read before and never acknowledged
        self._cursor = "0-0"
        self._next_claim = 0.0
        ensure_group(client, stream, group)

    def read(self, count: int, block_ms: int | None = None) -> list[Entry]:
        """Up to ``count`` entries; blocks up to ``block_ms`` only when nothing is pending."""
        if self._recovering:
            entries = self._recover(count)
            if entries:
                return entries
        if self.claim_idle_ms is not None and time.monotonic() >= self._next_claim:
            claimed = self._autoclaim(count)
            if claimed:
                return claimed
            self._next_claim = time.monotonic() + self.claim_idle_ms / 2000
        return self._xreadgroup(">", count, block_ms)

    def _recover(self, count: int) -> list[Entry]:
        if self.claim_idle_ms is not None:  # one of many: only its own
            entries = self._xreadgroup("0", count, None)
            self._recovering = bool(entries)
            return entries
        reply = self.client.xautoclaim(self.stream, self.group, self.consumer, 0, self._cursor, count=count)
        self._cursor = reply[0]
        if self._cursor in (b"0-0", "0-0"):
            self._recovering = False
        return self._live(reply[1])

    def _xreadgroup(self, start: str, count: int, block_ms: int | None) -> list[Entry]:
        reply = self.client.xreadgroup(
            self.group, self.consumer, {self.stream: start}, count=count, block=block_ms
        )
        return self._live(reply[0][1] if reply else [])

    def _autoclaim(self, count: int) -> list[Entry]:
        reply = self.client.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=count
        )
        entries = self._live(reply[1])
        if entries:
            log.warning("%s: reclaimed %d entries idle > %d ms from a dead consumer",
                        self.stream, len(entries), self.claim_idle_ms)
        return entries

    def _live(self, entries: list) -> list[Entry]:
        """Drop pending ids whose entry was deleted (acknowledged elsewhere), acking them."""
        gone = [eid for eid, fields in entries if fields is None]
        if gone:
            self.client.xack(self.stream, self.group, *gone)
        return [(eid, fields) for eid, fields in entries if fields is not None]

    def ack(self, ids: Iterable[bytes], pipe: redis.client.Pipeline | None = None) -> None:
        """Acknowledge and delete; inside ``pipe`` when the caller commits more atomically."""
        ids = list(ids)
        if not ids:
            return
        target = pipe if pipe is not None else self.client.pipeline(transaction=True)
        target.xack(self.stream, self.group, *ids)
        target.xdel(self.stream, *ids)
        if pipe is None:
            target.execute()


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as err:
        if "BUSYGROUP" not in str(err):
            raise


def dead_letter(
    client: redis.Redis,
    keys: Keys,
    source: str,
    entry_id: bytes,
    raw: bytes,
    reason: str,
    detail: str,
    pipe: redis.client.Pipeline | None = None,
) -> None:
    target = pipe if pipe is not None else client
    target.xadd(
        keys.deadletter,
        {"source": source, "id": entry_id, "reason": reason, "detail": detail[:2000], "raw": raw},
        maxlen=DEADLETTER_MAXLEN,
        approximate=True,
    )


def publish_group(
    client: redis.Redis,
    keys: Keys,
    group: RolloutGroup,
    prompt_consumer: StreamConsumer | None = None,
    prompt_entry: bytes | None = None,
) -> bytes:
    """XADD one whole group; with the prompt it answers, XACK that prompt in the same
    MULTI, so the prompt is acknowledged exactly when its group is in the stream."""
    payload = {ROLLOUT_FIELD: encode_group(group)}
    if prompt_consumer is None or prompt_entry is None:
        return client.xadd(keys.rollouts, payload)
    pipe = client.pipeline(transaction=True)
    pipe.xadd(keys.rollouts, payload)
    prompt_consumer.ack([prompt_entry], pipe)
    pipe.hincrby(keys.state, GENERATED, 1)  # an independent count for the run's accounting
    return pipe.execute()[0]


class PromptAdmission:
    """Admission control: at most ``capacity`` = (η+1)·B groups in flight.

    Acknowledged entries are deleted, so in-flight work is derived, not counted:
    in flight = XLEN(prompts) + XLEN(rollouts) − ``settled``, where ``settled`` is the
    number of groups the learner has trained whose acknowledgement waits for the next
    checkpoint. After a crash those are re-read and trained again, and the formula stays
    right without any counter to repair.
    """

    def __init__(self, client: redis.Redis, keys: Keys, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("admission capacity must be >= 1")
        self.client = client
        self.keys = keys
        self.capacity = capacity
        ensure_group(client, keys.prompts, ACTORS_GROUP)

    def in_flight(self, settled: int = 0) -> int:
        pipe = self.client.pipeline(transaction=False)
        pipe.xlen(self.keys.prompts)
        pipe.xlen(self.keys.rollouts)
        prompts, rollouts = pipe.execute()
        return int(prompts) + int(rollouts) - settled

    def admit(self, prompts: Iterator[PromptItem], settled: int = 0) -> int:
        """Admit from ``prompts`` until the window is full (or the source runs out);
        returns how many were admitted."""
        room = max(self.capacity - self.in_flight(settled), 0)
        items = list(itertools.islice(prompts, room))
        if items:
            pipe = self.client.pipeline(transaction=False)
            for item in items:
                pipe.xadd(self.keys.prompts, {PROMPT_FIELD: encode_prompt(item)})
            pipe.execute()
        return len(items)


def stream_lag(client: redis.Redis, stream: str) -> int:
    """Entries undelivered or in progress (acknowledged entries are deleted)."""
    return int(client.xlen(stream))


class Backpressure:
    """Pauses a producer while the rollout stream's lag is above a bound.

    States::

        flowing ──lag > max_lag──► paused (polls XLEN every `poll_s`, no busy loop)
           ▲                          │
           └──────lag ≤ max_lag───────┘   (or stop is set)
    """

    def __init__(self, client: redis.Redis, stream: str, max_lag: int, poll_s: float = 0.5) -> None:
        self.client, self.stream, self.max_lag, self.poll_s = client, stream, max_lag, poll_s

    def wait(self, stop: threading.Event, on_change: Callable[[bool], None] | None = None) -> bool:
        """Block while lagging; returns True if it paused at all."""
        paused = False
        while not stop.is_set() and stream_lag(self.client, self.stream) > self.max_lag:
            if not paused:
                paused = True
                log.warning("%s lag above %d: pausing", self.stream, self.max_lag)
                if on_change:
                    on_change(True)
            stop.wait(self.poll_s)
        if paused and on_change:
            on_change(False)
        return paused
