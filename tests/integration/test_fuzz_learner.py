"""A live fuzz test: generated rollout records — valid, on the boundaries, and hostile
(valid by type but not by meaning, malformed bytes, repeats, poison pills) — injected into
a running learner's stream. The learner never stops; every record is trained exactly once
or dead-lettered or dropped with its reason, and generated = trained + dead-lettered +
dropped holds exactly. ``make soak`` runs it with 3,000 records (HSD_FUZZ_RECORDS)."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import threading
import uuid
from collections import Counter

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from core.config import load_config
from learner.service import Learner
from services.transport.streams import ROLLOUT_FIELD, Keys, publish_group
from tests.integration.batches import real_groups
from tests.waiting import wait_until

RECORDS = int(os.environ.get("HSD_FUZZ_RECORDS", "150"))
G, MAX_RESPONSE, VOCAB = 4, 40, 101  # real_groups: 4 samples, 14-27 response tokens; the tiny vocabulary


def _sample(group, i, **changes):
    samples = list(group.samples)
    samples[i] = dataclasses.replace(samples[i], **changes)
    return dataclasses.replace(group, samples=tuple(samples))


def _longer(group, i, n):
    s = group.samples[i]
    return _sample(group, i, ids=np.resize(s.ids, n).astype(np.int32), logprobs=np.resize(s.logprobs, n))


KINDS = ["valid", "valid", "valid", "boundary", "no_answer", "duplicate", "group_size", "too_long", "reward",
         "logprob", "empty_prompt", "system_only", "future", "huge_text", "bytes", "token_range"]


def _mutation(rng: random.Random, group, seen_valid: list[str]):
    """(what to publish: a group or raw bytes, expected outcome) for one drawn mutation."""
    kind = rng.choice(KINDS)
    i = rng.randrange(G)
    if kind == "duplicate" and seen_valid:
        return dataclasses.replace(group, group_id=rng.choice(seen_valid)), "duplicate"
    if kind in ("valid", "duplicate"):
        return group, "trained"
    if kind == "boundary":  # exactly at the limit, and an empty response (valid; nothing to train in it)
        return _sample(_longer(group, i, MAX_RESPONSE), (i + 1) % G, ids=np.zeros(0, np.int32),
                       logprobs=np.zeros(0, np.float32), text=""), "trained"
    if kind == "no_answer":
        return dataclasses.replace(group, answer=None), "trained"
    if kind == "group_size":
        n = rng.choice([1, G - 1, G + 1, 4 * G])
        return dataclasses.replace(group, samples=tuple(group.samples[k % G] for k in range(n))), "dead"
    if kind == "too_long":
        return _longer(group, i, rng.randint(MAX_RESPONSE + 1, 3000)), "dead"
    if kind == "reward":
        value = rng.choice([3e38, -3e38, math.inf, -math.inf, math.nan, 1e4])
        return _sample(group, i, reward=value), "dead"
    if kind == "logprob":
        lp = group.samples[i].logprobs.copy()
        lp[rng.randrange(lp.size)] = rng.choice([-3e38, -1e4, -1001.0])
        return _sample(group, i, logprobs=lp), "dead"
    if kind == "empty_prompt":
        return dataclasses.replace(group, prompt_ids=np.zeros(0, np.int32)), "dead"
    if kind == "system_only":  # well-formed, within limits; no teacher view can be made of it
        return dataclasses.replace(group, prompt=[{"role": "system", "content": "be brief"}]), "dead"
    if kind == "future":
        return dataclasses.replace(group, policy_version=10**9), "future"
    if kind == "huge_text":
        return _sample(group, i, text="x" * rng.randint(MAX_RESPONSE * 32 + 1, 100_000)), "dead"
    if kind == "bytes":
        return rng.randbytes(rng.randrange(300)), "dead"
    ids = group.samples[i].ids.copy()
    ids[0] = rng.choice([VOCAB + 5, -1, 2**31 - 1])
    return _sample(group, i, ids=ids), "dead"


# one generated example (its records are many), not shrunk: a failure names the outcome
# counts, and each example would need a learner of its own
@settings(max_examples=1, deadline=None, database=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(rng=st.randoms(use_true_random=True))
def test_generated_hostile_records_never_stop_the_learner_and_all_are_accounted_for(
        client, tiny_model_dir, tmp_path, rng):
    run = f"fuzz-{uuid.uuid4().hex[:8]}"  # hypothesis runs a failing example again to report it
    keys = Keys(run)
    pool = real_groups(tiny_model_dir, 4, run=run)
    assert max(part.ids.size for g in pool for s in g.samples for part in (s, s.revision)) < MAX_RESPONSE
    expected: Counter[str] = Counter()
    valid_ids: list[str] = []
    for n in range(RECORDS):
        base = dataclasses.replace(pool[n % len(pool)], group_id=f"r{n}")
        record, outcome = _mutation(rng, base, valid_ids)
        if isinstance(record, bytes):
            client.xadd(keys.rollouts, {ROLLOUT_FIELD: record})
        else:
            publish_group(client, keys, record)
        if outcome == "trained":
            valid_ids.append(record.group_id)
        expected[outcome] += 1
    config = load_config(environ={}, overrides=[
        f'run.name="{run}"', f'run.dir="{tmp_path / run}"', "learner.batch_groups=1", "learner.max_staleness=1000000",
        "learner.checkpoint_every=0", "learner.credit_log_every=0", "learner.lr=1e-4", "metrics.enabled=false",
        f"actor.group_size={G}", f"model.max_response_tokens={MAX_RESPONSE}", 'algorithm.method="hsd"'])
    registry = CollectorRegistry()
    learner = Learner(config, client, str(tiny_model_dir), registry=registry, prompts=iter(())).start()
    failure: list[BaseException] = []

    def train() -> None:
        try:
            learner.run(steps=10**9)
        except BaseException as err:  # the assertion below reports it
            failure.append(err)

    worker = threading.Thread(target=train)
    worker.start()
    try:
        wait_until(lambda: failure or (client.xlen(keys.rollouts) == 0 and not learner.replay.buffer),
                   60 + RECORDS * 0.5, lambda: f"{client.xlen(keys.rollouts)} rollouts still in the stream")
    finally:
        learner.stop()
        worker.join(60)
        learner.close()
    assert not failure, f"the learner stopped: {failure[0]!r}"
    dropped = {r: registry.get_sample_value("hsd_replay_dropped_total", {"reason": r}) or 0
               for r in ("malformed", "duplicate", "future", "stale", "lost")}
    assert learner.trained_groups == expected["trained"], (dict(expected), dropped)
    assert {m.decode() for m in client.smembers(keys.trained)} == set(valid_ids)
    assert dropped == {"malformed": expected["dead"], "duplicate": expected["duplicate"],
                       "future": expected["future"], "stale": 0, "lost": 0}
    assert client.xlen(keys.deadletter) == expected["dead"]
    assert learner.trained_groups + sum(dropped.values()) == RECORDS
    summary = learner.summary()  # the run's totals, as kept in Redis
    assert summary["trained_groups"] == learner.trained_groups
    assert summary["dropped"] == {r: n for r, n in dropped.items() if n}
