"""Streams, replay buffer and admission against a real Redis server."""

from __future__ import annotations

import threading

import msgpack
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from core.codec import decode_prompt, encode_group
from learner.replay import ReplayBuffer, ReplaySettings
from methods.peers import NoPeer, PeerSource
from services.metrics import ReplayMetrics
from services.transport.streams import (
    ACTORS_GROUP,
    PROMPT_FIELD,
    ROLLOUT_FIELD,
    Backpressure,
    Keys,
    PromptAdmission,
    StreamConsumer,
    publish_group,
)
from tests.unit.core.records_factory import make_group, make_prompt, make_sample


def _replay(client, run, registry=None, **settings) -> ReplayBuffer:
    defaults = dict(batch_groups=2, max_staleness=1, vocab_size=100)
    s = ReplaySettings(**{**defaults, **settings})
    return ReplayBuffer(client, Keys(run), s, metrics=ReplayMetrics(registry or CollectorRegistry()))


def _metric(registry, name, **labels):
    return registry.get_sample_value(name, labels or None)


def test_round_trip_through_the_rollout_stream(client):
    keys = Keys("roundtrip")
    groups = [make_group(run=keys.run, group_id=f"{i:02x}", policy_version=3) for i in range(3)]
    for g in groups:
        publish_group(client, keys, g)
    replay = _replay(client, keys.run, batch_groups=3)
    batch = replay.next_batch(version=3, timeout_s=5)
    assert [t.group.group_id for t in batch] == ["00", "01", "02"]
    np.testing.assert_array_equal(batch[1].group.samples[2].logprobs, groups[1].samples[2].logprobs)
    assert client.xlen(keys.rollouts) == 3  # still pending until committed
    replay.commit(batch)
    assert client.xlen(keys.rollouts) == 0
    assert client.xpending(keys.rollouts, "learner")["pending"] == 0


def test_a_batch_s_order_and_peers_follow_from_its_groups_not_their_arrival(client):
    """Two actors deliver the same groups in either order: the learner trains the same
    step (a synchronous run's reproducibility rests on it)."""
    def group(prompt: int, order: str):
        # all successful: every sample's peer is a random draw among the others
        return make_group(run=f"arrival-{order}", prompt_id=f"p-{prompt}", policy_version=0,
                          samples=tuple(make_sample(4, seed=10 * prompt + k) for k in range(4)))

    batches = {}
    for order, prompts in (("ab", (0, 1, 2)), ("ba", (2, 0, 1))):
        for p in prompts:
            publish_group(client, Keys(f"arrival-{order}"), group(p, order))
        batch = _replay(client, f"arrival-{order}", batch_groups=3).next_batch(0, timeout_s=5)
        batches[order] = [(t.group.prompt_id, [(tag.source, tag.index) for tag in t.tags]) for t in batch]
    assert batches["ab"] == batches["ba"]
    assert any(tags != batches["ab"][0][1] for _, tags in batches["ab"][1:])  # the draws are per group


def test_learner_restart_rereads_uncommitted_but_not_committed(client):
    keys = Keys("restart")
    for i in range(4):
        publish_group(client, keys, make_group(run="restart", group_id=f"{i:02x}", policy_version=0))
    first = _replay(client, "restart")
    committed = first.next_batch(0, timeout_s=5)
    first.commit(committed)
    uncommitted = first.next_batch(0, timeout_s=5)
    assert uncommitted is not None
    del first  # the learner dies between read and ack
    second = _replay(client, "restart")
    again = second.next_batch(0, timeout_s=5)
    assert {t.group.group_id for t in again} == {t.group.group_id for t in uncommitted}
    assert not {t.group.group_id for t in again} & {t.group.group_id for t in committed}


def test_groups_a_checkpoint_trained_on_are_committed_at_resume_not_retrained(client):
    """The learner wrote a checkpoint, then died before committing its batch (Redis down,
    kill -9): the resumed learner commits what the checkpoint lists, reads only the rest,
    and counts nothing as dropped."""
    keys = Keys("recover")
    for i in range(4):
        publish_group(client, keys, make_group(run="recover", group_id=f"{i:02x}", policy_version=0))
    first = _replay(client, "recover")
    in_checkpoint = first.next_batch(0, timeout_s=5)
    listed = [[t.entry_id.decode(), t.group.group_id] for t in in_checkpoint]
    del first  # dies before commit
    second = _replay(client, "recover")
    second.commit_recovered(listed)
    second.commit_recovered(listed)  # idempotent
    rest = second.next_batch(0, timeout_s=5)
    assert {t.group.group_id for t in rest} == {"00", "01", "02", "03"} - {g for _, g in listed}
    second.commit(rest)
    assert second.run_totals() == (4, {})
    assert client.xlen(keys.rollouts) == 0


def test_crashed_actor_prompt_is_reclaimed_only_after_the_timeout(client):
    keys = Keys("reclaim")
    admission = PromptAdmission(client, keys, capacity=4)
    assert admission.admit(iter([make_prompt(prompt_id="only")] * 4)) == 4
    dead = StreamConsumer(client, keys.prompts, ACTORS_GROUP, "actor-dead", claim_idle_ms=300)
    taken = dead.read(count=4)
    assert len(taken) == 4
    # actor-dead is killed here: nothing acknowledged
    other = StreamConsumer(client, keys.prompts, ACTORS_GROUP, "actor-live", claim_idle_ms=300)
    assert other.read(count=4, block_ms=50) == []  # not idle long enough yet
    threading.Event().wait(0.4)
    other._next_claim = 0.0
    reclaimed = other.read(count=4)
    assert sorted(e for e, _ in reclaimed) == sorted(e for e, _ in taken)
    assert decode_prompt(reclaimed[0][1][PROMPT_FIELD]).prompt_id == "only"
    pending = client.xpending_range(keys.prompts, ACTORS_GROUP, "-", "+", 10)
    assert {p["consumer"] for p in pending} == {b"actor-live"}


def test_actor_hand_off_acks_the_prompt_with_the_group(client):
    keys = Keys("handoff")
    PromptAdmission(client, keys, capacity=1).admit(iter([make_prompt()]))
    actor = StreamConsumer(client, keys.prompts, ACTORS_GROUP, "a0")
    [(entry, _)] = actor.read(1)
    publish_group(client, keys, make_group(run="handoff"), actor, entry)
    assert client.xlen(keys.prompts) == 0
    assert client.xpending(keys.prompts, ACTORS_GROUP)["pending"] == 0
    assert client.xlen(keys.rollouts) == 1


def test_malformed_entries_are_dead_lettered_while_good_ones_flow(client):
    keys = Keys("dlq")
    registry = CollectorRegistry()
    admission = PromptAdmission(client, keys, capacity=100)
    admission.admit(iter([make_prompt()] * 100))
    good = lambda i: encode_group(make_group(run="dlq", group_id=f"{i:02x}"))  # noqa: E731
    nan_group = msgpack.unpackb(good(9), raw=False)
    nan_group["samples"][0]["logprobs"] = np.full(5, np.nan, "<f4").tobytes()
    bad = {
        "not_msgpack": {ROLLOUT_FIELD: b"\xc1garbage"},
        "non_finite": {ROLLOUT_FIELD: msgpack.packb(nan_group, use_bin_type=True)},
        "missing_field": {b"other": b"x"},
        "wrong_run": {ROLLOUT_FIELD: encode_group(make_group(run="elsewhere"))},
    }
    for i, fields in enumerate(bad.values()):
        client.xadd(keys.rollouts, {ROLLOUT_FIELD: good(i)})
        client.xadd(keys.rollouts, fields)
    replay = ReplayBuffer(client, keys, ReplaySettings(batch_groups=4, vocab_size=100),
                          metrics=ReplayMetrics(registry))
    batch = replay.next_batch(7, timeout_s=5)  # make_group's groups are version 7
    assert [t.group.group_id for t in batch] == ["00", "01", "02", "03"]
    letters = client.xrange(keys.deadletter)
    assert [f[b"reason"].decode() for _, f in letters] == list(bad)
    assert letters[0][1][b"raw"] == b"\xc1garbage"
    assert _metric(registry, "hsd_replay_dropped_total", reason="malformed") == 4
    assert _metric(registry, "hsd_replay_groups_ingested_total") == 4
    replay.commit(batch)
    assert admission.in_flight() == 100  # the prompts themselves were never taken by an actor
    assert client.xlen(keys.rollouts) == 0


def test_stale_future_and_lost_groups_are_dropped_each_with_its_reason(client):
    keys = Keys("stale")
    registry = CollectorRegistry()
    for i, v in enumerate([0, 1, 5, 2, 9, 3, 3]):
        publish_group(client, keys, make_group(run="stale", group_id=f"{i:02x}", policy_version=v))
    replay = _replay(client, "stale", registry, batch_groups=2, max_staleness=1)
    batch = replay.next_batch(version=4, timeout_s=5)
    assert [t.group.policy_version for t in batch] == [3, 3]
    assert _metric(registry, "hsd_replay_dropped_total", reason="stale") == 3
    assert _metric(registry, "hsd_replay_dropped_total", reason="future") == 2  # versions 5 and 9 at 4
    replay.commit(batch)
    replay.lost_versions = [(3, 3)]  # as a resumed learner sets it
    publish_group(client, keys, make_group(run="stale", group_id="fd", policy_version=3))
    assert replay.next_batch(version=4, timeout_s=0.3) is None
    assert _metric(registry, "hsd_replay_dropped_total", reason="lost") == 1
    replay.lost_versions = []
    # groups buffered while fresh go stale when the version moves on
    publish_group(client, keys, make_group(run="stale", group_id="ff", policy_version=4))
    publish_group(client, keys, make_group(run="stale", group_id="fe", policy_version=4))
    replay.poll(version=4, block_ms=100)
    assert replay.next_batch(version=6, timeout_s=0.2) is None
    assert _metric(registry, "hsd_replay_dropped_total", reason="stale") == 5


@pytest.mark.parametrize(
    ("successes", "expected"),
    [
        ((False, False, False), [(PeerSource.ANSWER, None)] * 3),
        ((False, True, False), [(PeerSource.GROUP, 1), (PeerSource.ANSWER, None), (PeerSource.GROUP, 1)]),
        ((True, True, True), "all-group"),
    ],
)
def test_peer_tagging(client, successes, expected):
    run = f"tag{''.join('1' if s else '0' for s in successes)}"
    publish_group(client, Keys(run), make_group(
        run=run, samples=tuple(make_sample(4, seed=k, success=ok) for k, ok in enumerate(successes))))
    registry = CollectorRegistry()
    [tagged] = _replay(client, run, registry, batch_groups=1).next_batch(7, timeout_s=5)
    got = [(t.source, t.index) for t in tagged.tags]
    if expected == "all-group":
        assert all(src is PeerSource.GROUP and j != i for i, (src, j) in enumerate(got))
        assert _metric(registry, "hsd_replay_peer_coverage") == 1.0
    else:
        assert got == expected
    if successes == (False, True, False):
        assert tagged.tags[1].reason is NoPeer.ONLY_SELF
        assert _metric(registry, "hsd_replay_peer_coverage") == pytest.approx(2 / 3)


def test_peer_bank_fallback_within_its_age(client):
    run = "bank"
    keys = Keys(run)
    win = make_group(run=run, group_id="01", prompt_id="p", policy_version=0,
                     samples=(make_sample(4, seed=1, success=True), make_sample(4, seed=2, success=False)))
    lose = lambda gid, v: make_group(run=run, group_id=gid, prompt_id="p", policy_version=v,  # noqa: E731
                                     samples=(make_sample(4, seed=3, success=False),) * 2)
    publish_group(client, keys, win)
    publish_group(client, keys, lose("02", 1))
    replay = _replay(client, run, batch_groups=2, peer_fallback="bank", peer_bank_max_age=2,
                     max_staleness=5)
    first, second = replay.next_batch(version=1, timeout_s=5)
    assert (first.tags[0].source, first.tags[0].reason) == (PeerSource.NONE, NoPeer.BANK_EMPTY)
    assert first.tags[1].source is PeerSource.GROUP
    assert {t.source for t in second.tags} == {PeerSource.BANK}
    np.testing.assert_array_equal(second.tags[0].carried.ids, win.samples[0].ids)
    assert second.tags[0].carried.group_id == "01"
    publish_group(client, keys, lose("03", 4))  # bank entry from v0 is 4 versions old > 2
    publish_group(client, keys, lose("04", 4))
    late = replay.next_batch(version=4, timeout_s=5)
    assert {(t.source, t.reason) for g in late for t in g.tags} == {(PeerSource.NONE, NoPeer.BANK_EMPTY)}
    assert client.llen(keys.peers("p")) == 1


def test_admission_keeps_at_most_eta_plus_one_batches_in_flight(client):
    keys = Keys("admit")
    eta, batch = 1, 2
    admission = PromptAdmission(client, keys, capacity=(eta + 1) * batch)
    prompts = (make_prompt(prompt_id=f"p{i}") for i in range(100))
    assert admission.admit(prompts) == 4
    assert admission.admit(prompts) == 0
    assert client.xlen(keys.prompts) == 4
    actor = StreamConsumer(client, keys.prompts, ACTORS_GROUP, "a")
    for entry, _ in actor.read(2):
        publish_group(client, keys, make_group(run="admit"), actor, entry)
    replay = ReplayBuffer(client, keys, ReplaySettings(batch_groups=2),
                          metrics=ReplayMetrics(CollectorRegistry()))
    assert admission.admit(prompts) == 0  # generated but not yet trained: in flight
    batch = replay.next_batch(7, timeout_s=5)
    assert admission.admit(prompts, settled=0) == 0
    # trained, acknowledgement waiting for a checkpoint: settled, so room again
    assert admission.in_flight(settled=2) == 2
    replay.commit(batch)
    assert admission.in_flight() == 2
    assert admission.admit(prompts) == 2


def test_an_idle_actor_blocks_instead_of_polling(client, redis_server):
    keys = Keys("idle")
    actor = StreamConsumer(client, keys.prompts, ACTORS_GROUP, "a", claim_idle_ms=60_000)
    actor.read(1)  # drains the own-pending pass and the first claim
    before = client.info("commandstats").get("cmdstat_xreadgroup", {}).get("calls", 0)
    assert actor.read(1, block_ms=600) == []
    after = client.info("commandstats")["cmdstat_xreadgroup"]["calls"]
    assert after - before == 1


def test_backpressure_pauses_while_the_rollout_stream_lags(client):
    keys = Keys("bp")
    for _ in range(3):
        client.xadd(keys.rollouts, {ROLLOUT_FIELD: b"x"})
    stop = threading.Event()
    changes: list[bool] = []
    gate = Backpressure(client, keys.rollouts, max_lag=2, poll_s=0.05)
    waiter = threading.Thread(target=lambda: gate.wait(stop, changes.append))
    waiter.start()
    try:
        threading.Event().wait(0.3)
        assert changes == [True] and waiter.is_alive()
        client.xtrim(keys.rollouts, maxlen=1, approximate=False)
        waiter.join(timeout=5)
        assert changes == [True, False] and not waiter.is_alive()
    finally:
        stop.set()
    assert gate.wait(stop) is False
