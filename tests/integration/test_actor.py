"""The actor against a real Redis and a real weight service."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.request

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from actors.actor import Actor, JoinRefused
from core.codec import decode_group, encode_prompt
from core.config import config_hash, load_config
from core.engines.base import SamplingSettings
from core.engines.hf import HFEngine
from core.records import PromptItem
from core.tasks import Score, make_task
from core.tasks.arith import ArithTask
from methods import configure
from services.metrics import ActorMetrics
from services.transport.redis_client import connect
from services.transport.streams import ACTORS_GROUP, PROMPT_FIELD, ROLLOUT_FIELD, Keys, ensure_group
from services.weights.server import WeightServer
from tests.unit.core.records_factory import make_prompt
from tests.waiting import wait_until


def _overrides(run: str, model_dir) -> list[str]:
    return [f'run.name="{run}"', f'model.path="{model_dir}"', "actor.group_size=3",
            "model.max_response_tokens=12", "redis.block_ms=200", "redis.claim_timeout_s=1.5"]


def _announce(client, config, server: WeightServer) -> None:
    """What a learner writes at start, from its config completed as every process of a run
    completes it (the method's defaults) — the actor compares that hash with its own."""
    configure(config)
    client.hset(Keys(config.run.name).state, mapping={
        "weights": server.address, "config_hash": config_hash(config), "version": 0, "published": 0})


_problems = ArithTask().problems("train", seed=1)


def _admit(client, run: str, n: int) -> list[str]:
    """Enqueue n fresh prompts (no learner here to retire groups, so no admission window)."""
    keys = Keys(run)
    ensure_group(client, keys.prompts, ACTORS_GROUP)
    ids = []
    for _ in range(n):
        p = next(_problems)
        client.xadd(keys.prompts, {PROMPT_FIELD: encode_prompt(PromptItem(p.prompt_id, "arith", p.prompt, p.answer, 0))})
        ids.append(p.prompt_id)
    return ids


def _groups(client, run: str):
    return [decode_group(f[ROLLOUT_FIELD]) for _, f in client.xrange(Keys(run).rollouts)]


@pytest.fixture
def weight_server(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    server = WeightServer(port=0).start()
    server.publish(0, AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict())
    yield server
    server.stop(grace=0)


def _actor(client, config, tiny_model_dir, registry=None) -> Actor:
    return Actor(config, client, HFEngine.from_pretrained(str(tiny_model_dir)), make_task("arith"),
                 actor_id="a0", metrics=ActorMetrics(registry or CollectorRegistry()))


def test_srt_actor_sends_a_scored_revision_with_every_failed_sample(client, tiny_model_dir, weight_server):
    config = load_config(environ={}, overrides=[*_overrides("srt1", tiny_model_dir), 'algorithm.method="srt"'])
    _announce(client, config, weight_server)
    _admit(client, "srt1", 1)
    actor = _actor(client, config, tiny_model_dir)
    actor.join()
    wait_until(lambda: actor.step(block_ms=200) is not None and _groups(client, "srt1"), 120, "the srt actor wrote no group",
               interval_s=0)
    (group,) = _groups(client, "srt1")
    problem = ArithTask().problem(group.prompt_id)
    assert not all(s.success for s in group.samples), "the untrained model solved every problem"
    for s in group.samples:
        r = s.revision
        assert (r is None) == s.success  # right attempts are not revised (algorithm.srt_revise_correct)
        if r is None:
            continue
        assert len(r.ids) == len(r.logprobs) and 1 <= len(r.ids) <= 12
        assert np.all(np.isfinite(r.logprobs)) and np.all(r.logprobs <= 0)
        assert r.text == actor.tokenizer.decode(r.ids.tolist(), skip_special_tokens=True)
        assert r.success == ArithTask().score(r.text, problem).success and r.reward == float(r.success)


def test_actor_writes_scored_groups_and_follows_new_versions(client, tiny_model_dir, weight_server):
    config = load_config(environ={}, overrides=_overrides("actor1", tiny_model_dir))
    _announce(client, config, weight_server)
    admitted = _admit(client, "actor1", 2)
    registry = CollectorRegistry()
    actor = _actor(client, config, tiny_model_dir, registry)
    assert actor.readiness()[0] is False
    actor.join()
    assert actor.readiness()[0] and actor.engine.version == 0
    wait_until(lambda: actor.step(block_ms=200) is not None and len(_groups(client, "actor1")) >= 2, 120,
               "the actor did not write its 2 groups", interval_s=0)
    groups = _groups(client, "actor1")
    assert sorted(g.prompt_id for g in groups) == sorted(admitted)
    for g in groups:
        assert g.policy_version == 0 and g.size == 3 and g.actor == "a0"
        for s in g.samples:
            assert len(s.ids) == len(s.logprobs) and 1 <= len(s.ids) <= 12
            assert np.all(np.isfinite(s.logprobs)) and np.all(s.logprobs <= 0)
            assert s.reward in (0.0, 1.0) and s.finish in ("stop", "length")
    assert client.xlen(Keys("actor1").prompts) == 0  # acknowledged with their groups

    # a new version: loaded between batches, and the next group says so
    new = {k: v * 0.5 for k, v in actor.engine.model.state_dict().items()}
    weight_server.publish(1, new)
    client.hset(Keys("actor1").state, "published", 1)  # what the learner records once it is served
    assert actor.follower.pending() == 1
    _admit(client, "actor1", 1)
    wait_until(lambda: actor.step(block_ms=200) is not None and len(_groups(client, "actor1")) >= 3, 120,
               "the actor wrote no group after version 1", interval_s=0)
    assert _groups(client, "actor1")[-1].policy_version == 1
    assert torch.equal(actor.engine.model.state_dict()["model.norm.weight"], new["model.norm.weight"])
    assert registry.get_sample_value("hsd_actor_weight_sync_seconds_count") == 2
    assert registry.get_sample_value("hsd_actor_groups_total") == 3
    assert registry.get_sample_value("hsd_actor_policy_version") == 1


class _BrokenVerifierArith(ArithTask):
    """Arithmetic whose verifier is broken the two ways a real one breaks: it raises on
    half of the completions and runs out of time on the others (what the math, code and
    sandboxed plug-in verifiers return then: a 0 with error "timeout")."""

    def verify(self, completion, fields):
        if len(completion) % 2 == 0:
            raise RuntimeError("verifier bug")
        return Score(0.0, False, "timeout")


def test_verifier_errors_and_timeouts_score_0_are_counted_and_the_actor_goes_on(client, tiny_model_dir,
                                                                                 weight_server):
    config = load_config(environ={}, overrides=_overrides("broken", tiny_model_dir))
    _announce(client, config, weight_server)
    _admit(client, "broken", 2)
    registry = CollectorRegistry()
    actor = Actor(config, client, HFEngine.from_pretrained(str(tiny_model_dir)), _BrokenVerifierArith(),
                  actor_id="a0", metrics=ActorMetrics(registry))
    actor.join()
    wait_until(lambda: actor.step(block_ms=200) is not None and len(_groups(client, "broken")) >= 2, 120,
               "the actor stopped writing groups when its verifier broke", interval_s=0)
    samples = [s for g in _groups(client, "broken") for s in g.samples]
    assert all(s.reward == 0.0 and not s.success for s in samples)
    raised = sum(len(s.text) % 2 == 0 for s in samples)
    errors = {kind: registry.get_sample_value("hsd_actor_verifier_errors_total", {"kind": kind})
              for kind in ("exception", "timeout")}
    assert errors == {"exception": raised, "timeout": len(samples) - raised}
    truncated = sum(s.finish == "length" for s in samples)
    assert registry.get_sample_value("hsd_actor_truncated_samples_total") == truncated


def test_an_actor_with_another_config_refuses_to_join(client, tiny_model_dir, weight_server):
    config = load_config(environ={}, overrides=_overrides("actor2", tiny_model_dir))
    _announce(client, config, weight_server)
    other = load_config(environ={}, overrides=[*_overrides("actor2", tiny_model_dir), "actor.temperature=0.5"])
    with pytest.raises(JoinRefused, match="differs"):
        _actor(client, other, tiny_model_dir).join(timeout_s=5)


def test_a_malformed_prompt_is_dead_lettered_and_the_actor_goes_on(client, tiny_model_dir, weight_server):
    config = load_config(environ={}, overrides=_overrides("actor3", tiny_model_dir))
    _announce(client, config, weight_server)
    keys = Keys("actor3")
    client.xadd(keys.prompts, {b"p": b"\xc1 not msgpack"})
    # over model.max_prompt_tokens (256): the learner would refuse the group, so it is never generated
    client.xadd(keys.prompts, {b"p": bytes(encode_prompt(make_prompt(prompt="1+" * 200 + "1?")))})
    _admit(client, "actor3", 1)
    actor = _actor(client, config, tiny_model_dir)
    actor.join()
    wait_until(lambda: actor.step(block_ms=200) is not None and _groups(client, "actor3"), 120,
               "the actor wrote no group after the malformed prompts", interval_s=0)
    letters = [letter for _, letter in client.xrange(keys.deadletter)]
    assert [letter[b"reason"] for letter in letters] == [b"not_msgpack", b"too_long"]
    assert b"renders to" in letters[1][b"detail"]
    assert client.xlen(keys.prompts) == 0 and len(_groups(client, "actor3")) == 1


def _spawn_actor(redis_url: str, run: str, model_dir, actor_id: str, tmp_path) -> tuple[subprocess.Popen, str]:
    metrics_file = tmp_path / f"{actor_id}.url"
    cmd = [sys.executable, "-m", "services.apps.cli", "actor", "--redis-url", redis_url, "--run", run,
           "--actor-id", actor_id, "--metrics-file", str(metrics_file)]
    for o in _overrides(run, model_dir):
        cmd += ["--set", o]
    with open(tmp_path / f"{actor_id}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    log_text = (tmp_path / f"{actor_id}.log").read_text
    wait_until(lambda: proc.poll() is not None or metrics_file.exists(), 60,
               lambda: f"actor {actor_id} wrote no metrics file: {log_text()}")
    assert proc.poll() is None, f"actor {actor_id} exited with {proc.returncode}: {log_text()}"
    return proc, metrics_file.read_text()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.mark.slow
def test_actor_process_health_metrics_sigterm_and_reclaim_after_kill_9(
        redis_server, tiny_model_dir, weight_server, tmp_path):
    client = connect(redis_server.url)
    config = load_config(environ={}, overrides=_overrides("actor4", tiny_model_dir))
    _announce(client, config, weight_server)
    proc, url = _spawn_actor(redis_server.url, "actor4", tiny_model_dir, "p1", tmp_path)
    wait_until(lambda: _get(url + "/healthz")[0] == 200, 60, "the actor process never became ready")
    admitted = _admit(client, "actor4", 4)
    wait_until(lambda: len(_groups(client, "actor4")) >= 4, 120, "the actor process did not write 4 groups")
    status, text = _get(url + "/metrics")
    assert status == 200 and "hsd_actor_groups_total 4.0" in text
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0

    # kill -9 while prompts are pending for it: another actor reclaims them
    victim, victim_url = _spawn_actor(redis_server.url, "actor4", tiny_model_dir, "victim", tmp_path)
    wait_until(lambda: _get(victim_url.strip() + "/healthz")[0] == 200, 60, "the victim actor never became ready")
    more = _admit(client, "actor4", 4)
    keys = Keys("actor4")
    wait_until(lambda: client.xpending(keys.prompts, "actors")["pending"], 60,
               "the victim actor took no prompt", interval_s=0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    rescuer, _ = _spawn_actor(redis_server.url, "actor4", tiny_model_dir, "rescuer", tmp_path)
    try:
        wait_until(lambda: len(_groups(client, "actor4")) >= 8, 90, "prompts of the killed actor were lost",
                   interval_s=0.2)
        assert sorted(g.prompt_id for g in _groups(client, "actor4")) == sorted(admitted + more)
        assert client.xlen(keys.prompts) == 0
    finally:
        rescuer.send_signal(signal.SIGTERM)
        rescuer.wait(timeout=30)


def test_an_actor_leaves_when_the_run_has_finished(client, tiny_model_dir, weight_server):
    """A joined actor does not outlive its run: the learner's status "done" ends its loop."""
    config = load_config(environ={}, overrides=_overrides("actor-done", tiny_model_dir))
    _announce(client, config, weight_server)
    actor = _actor(client, config, tiny_model_dir)
    actor.join()
    client.hset(Keys("actor-done").state, "status", "done")
    finished = threading.Thread(target=actor.run, daemon=True)
    finished.start()
    finished.join(timeout=60)
    assert not finished.is_alive(), "the actor went on after its run had finished"


def test_a_seeded_prompt_s_samples_depend_on_its_seed_alone(tiny_model_dir):
    """What makes a synchronous run reproducible whichever actor takes a prompt, and with
    whatever else in its batch."""
    engine = HFEngine.from_pretrained(str(tiny_model_dir))
    problems = [next(_problems) for _ in range(2)]
    prompts = [engine.tokenizer(p.prompt)["input_ids"] for p in problems]
    sampling = SamplingSettings(n=4, max_tokens=12)

    def ids(groups):
        return [[c.ids for c in g] for g in groups]

    together = ids(engine.generate(prompts, sampling, seeds=[11, 12]))
    torch.manual_seed(999)  # the process's own generator is neither used nor moved
    state = torch.get_rng_state()
    alone = ids(engine.generate(prompts[1:], sampling, seeds=[12]))
    assert torch.equal(torch.get_rng_state(), state)
    assert together[1] == alone[0]
    assert ids(engine.generate(prompts[:1], sampling, seeds=[11])) == together[:1]
    assert ids(engine.generate(prompts[1:], sampling, seeds=[13])) != alone


def test_a_synchronous_actor_waits_for_the_learner_s_version_before_generating(client, tiny_model_dir,
                                                                               weight_server):
    """At η = 0 a group generated by the previous version would be dropped on arrival: the
    actor holds the prompt until the learner's new weights are served, then generates."""
    config = load_config(environ={}, overrides=[*_overrides("sync1", tiny_model_dir), "learner.max_staleness=0"])
    _announce(client, config, weight_server)
    actor = _actor(client, config, tiny_model_dir)
    actor.join()
    keys = Keys("sync1")
    client.hset(keys.state, "version", 1)  # the learner has trained version 1; not served yet
    _admit(client, "sync1", 1)
    stepping = threading.Thread(target=actor.step, kwargs={"block_ms": 200}, daemon=True)
    stepping.start()
    stepping.join(timeout=1.5)
    assert stepping.is_alive() and not _groups(client, "sync1"), "the actor generated at a version η = 0 drops"
    weight_server.publish(1, actor.engine.model.state_dict())
    client.hset(keys.state, "published", 1)
    stepping.join(timeout=60)
    assert not stepping.is_alive(), "the actor did not generate once version 1 was served"
    (group,) = _groups(client, "sync1")
    assert group.policy_version == 1
