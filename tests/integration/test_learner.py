"""The learner on the tiny real model: per-method steps, resume equivalence, poison."""

from __future__ import annotations

import dataclasses
import json

import msgpack
import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.actor import Actor
from core.codec import decode_group, encode_group, encode_prompt
from core.config import load_config
from core.engines.hf import HFEngine
from core.records import PromptItem, RolloutGroup, Sample
from core.tasks import make_task
from core.tasks.arith import ArithTask
from learner.batch import build_samples
from learner.service import Learner
from learner.trainer import TorchTrainer
from methods import make_method
from methods.sdzero import reviser_context
from services.metrics import ActorMetrics
from services.transport.streams import (
    ACTORS_GROUP,
    PROMPT_FIELD,
    ROLLOUT_FIELD,
    Keys,
    ensure_group,
    publish_group,
)
from tests.integration.batches import real_groups, tagged
from tests.waiting import wait_until


@pytest.mark.parametrize(("method", "loss"), [
    ("grpo", "sampled"), ("hsd", "sampled"), ("hsd", "topk"), ("opsd", "sampled"), ("sdzero", "sampled"),
    ("sdzero", "topk"), ("srt", "sampled"), ("rft", "sampled")])
def test_six_steps_of_each_method_lower_its_objective_on_a_fixed_batch(tiny_model_dir, method, loss):
    """Each method's objective goes down over steps on one batch: the PG surrogate (grpo),
    the NLL (srt), the top-k KL (topk), and for credit-as-advantage mean δ², of which that
    term's update is the gradient on a fixed batch (its surrogate's value moves with δ)."""
    distill = method in ("hsd", "opsd", "sdzero")
    config = load_config(environ={}, overrides=[
        f'algorithm.method="{method}"', f'algorithm.loss="{loss}"', "learner.lr=5e-5",
        'algorithm.teacher="frozen"', f'algorithm.advantage="{"none" if distill else "grpo"}"'])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    samples = build_samples(tagged(real_groups(tiny_model_dir, 3)), tok, make_method(config.algorithm))
    distilled = [s.teacher is not None for s in samples]
    assert any(distilled) == distill
    trainer = TorchTrainer(model, config, tok.pad_token_id)
    objective = "credit_sq" if distill and loss == "sampled" else "loss"
    losses = [trainer.train_step(samples).metrics[objective] for _ in range(6)]
    assert losses[-1] < losses[0], losses
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_srt_trains_the_accepted_revisions_in_both_stages(tiny_model_dir):
    config = load_config(environ={}, overrides=['algorithm.method="srt"'])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    groups = real_groups(tiny_model_dir, 2)
    samples = build_samples(tagged(groups), tok, make_method(config.algorithm))
    accepted = [(g, i) for g in groups for i, s in enumerate(g.samples) if s.revision.success]
    assert all(not g.samples[i].success for g, i in accepted)  # only wrong attempts were revised into right ones
    assert len(accepted) == 4 and len(samples) == 2 * len(accepted)  # stage 2 and stage 1 of each
    for (revision, generation), (g, i) in zip(zip(samples[::2], samples[1::2], strict=True), accepted, strict=True):
        s = g.samples[i]
        context = reviser_context(tok, g.prompt, s.ids.tolist(), s.success)
        stream = context + s.revision.ids.tolist()
        assert revision.student.ids == stream and revision.student.start == len(context)
        assert generation.student.ids == stream and generation.student.start == len(g.prompt_ids)
        assert all(x.teacher is None and x.advantage == 0.0 for x in (revision, generation))
        assert torch.equal(revision.behaviour, torch.from_numpy(s.revision.logprobs))
        assert torch.equal(generation.behaviour[-len(s.revision.ids):], torch.from_numpy(s.revision.logprobs))
    trainer = TorchTrainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config, tok.pad_token_id)
    none_accepted = build_samples(tagged([RolloutGroup(**{**groups[0].__dict__, "samples": tuple(
        Sample(**{**s.__dict__, "revision": None}) for s in groups[0].samples)})]), tok, make_method(config.algorithm))
    assert none_accepted == [] and trainer.train_step(none_accepted).metrics["loss"] == 0.0


def _learner(client, config, model_dir, registry=None) -> Learner:
    return Learner(config, client, str(model_dir), resume=True, registry=registry or CollectorRegistry(),
                   prompts=iter(()))


def _config(run: str, tmp_path, **extra):
    overrides = [f'run.name="{run}"', f'run.dir="{tmp_path / run}"', "learner.batch_groups=2",
                 "learner.checkpoint_every=2", "learner.max_staleness=100", "learner.lr=1e-3",
                 "weights.keep_versions=2", "metrics.enabled=false",
                 "actor.group_size=4"]  # tests.integration.batches makes groups of 4
    return load_config(environ={}, overrides=overrides + [f"{k}={v}" for k, v in extra.items()])


def _weights(learner: Learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.model.state_dict().items()}


@pytest.mark.slow
def test_resume_and_crash_recovery_end_with_the_uninterrupted_weights(client, tiny_model_dir, tmp_path):
    groups = real_groups(tiny_model_dir, 8)

    def publish(run):
        for g in groups:
            publish_group(client, Keys(run), RolloutGroup(**{**g.__dict__, "run": run}))

    # uninterrupted: 4 steps, the lr warmed up over 2, then a cosine over the other 2: the
    # schedule is a function of the step, so the resumed run must follow the same curve
    schedule = {"learner.lr_schedule": "cosine", "learner.warmup_steps": 2, "learner.schedule_steps": 4}
    publish("whole")
    registry = CollectorRegistry()
    whole = _learner(client, _config("whole", tmp_path, **schedule, **{"learner.keep_checkpoints": 1}),
                     tiny_model_dir, registry).start()
    whole.run(steps=4)
    want = _weights(whole)
    # the operations gauges: read at scrape time (checkpoint age, memory) or from the last batch
    value = registry.get_sample_value
    assert 0 <= value("hsd_learner_checkpoint_age_seconds") < 60  # step 4 was checkpointed just now
    assert value("hsd_redis_used_memory_bytes") > 0 and value("hsd_learner_gpu_memory_bytes", {"kind": "peak"}) == 0
    last = [r for r in map(json.loads, (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "step"]
    assert value("hsd_learner_zero_std_group_fraction") == last[-1]["zero_std_fraction"]
    assert value("hsd_learner_truncated_fraction") == last[-1]["truncated_fraction"]
    assert all(0 <= r["zero_std_fraction"] <= 1 and 0 <= r["truncated_fraction"] <= 1 for r in last)
    whole.close()
    lrs = [r["lr"] for r in last]
    assert lrs == pytest.approx([0.5e-3, 1e-3, 1e-3, 0.5e-3])
    assert whole.trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-3)  # what AdamW stepped with
    assert [p.name for p in (tmp_path / "whole" / "checkpoints").glob("step-*")] == ["step-000004"]  # kept: 1

    # 3 steps, then a "kill -9": step 3 was trained but never checkpointed or acknowledged
    publish("crash")
    first = _learner(client, _config("crash", tmp_path, **schedule), tiny_model_dir).start()
    for _ in range(3):
        first.train(first.replay.next_batch(first.version, timeout_s=5))
    assert first.step == 3 and client.xlen(Keys("crash").rollouts) == 4  # steps 3-4's groups pending
    first.close()
    del first
    resumed = _learner(client, _config("crash", tmp_path, **schedule), tiny_model_dir).start()
    # from the checkpoint, not from memory; version 3 named weights that are gone, so the
    # resumed ones are published as version 4
    assert (resumed.step, resumed.version) == (2, 4) and resumed.replay.lost_versions == [(3, 3)]
    resumed.run(steps=4)
    got = _weights(resumed)
    resumed.close()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
    assert client.xlen(Keys("crash").rollouts) == 0


def test_poison_entries_are_rejected_counted_and_never_trained_on(client, tiny_model_dir, tmp_path):
    run = "poison"
    good = real_groups(tiny_model_dir, 2, run=run)
    poison = msgpack.unpackb(bytes(encode_group(good[0])), raw=False)
    poison["samples"][0]["logprobs"] = np.full(len(good[0].samples[0].ids), np.nan, "<f4").tobytes()
    keys = Keys(run)
    client.xadd(keys.rollouts, {ROLLOUT_FIELD: msgpack.packb(poison, use_bin_type=True)})
    for g in good:
        publish_group(client, keys, g)
    registry = CollectorRegistry()
    learner = _learner(client, _config(run, tmp_path), tiny_model_dir, registry).start()
    learner.run(steps=1)
    learner.close()
    assert registry.get_sample_value("hsd_replay_dropped_total", {"reason": "malformed"}) == 1
    assert learner.trained_groups == 2
    assert [f[b"reason"] for _, f in client.xrange(keys.deadletter)] == [b"non_finite"]


def test_groups_valid_by_type_but_not_by_meaning_are_dead_lettered_and_the_learner_goes_on(
        client, tiny_model_dir, tmp_path):
    """Beyond the run's limits, a duplicate of a buffered and of a trained group, and a
    poison pill whose training samples cannot be made (a prompt with no user message for
    HSD's teacher to extend): none is trained, each is counted by reason, the valid groups
    are trained once, and generated = trained + dropped holds."""
    run = "meaning"
    good = real_groups(tiny_model_dir, 6, run=run)
    too_many = dataclasses.replace(good[0], group_id="too-many", samples=good[0].samples * 2)
    huge_reward = dataclasses.replace(good[1], group_id="huge-reward", samples=(
        dataclasses.replace(good[1].samples[0], reward=3e38), *good[1].samples[1:]))
    no_user = dataclasses.replace(good[2], group_id="no-user", prompt=[{"role": "system", "content": "be brief"}])
    keys = Keys(run)
    hostile = [too_many, huge_reward, no_user, good[0], good[0], good[1], good[2], good[3]]
    for g in hostile:
        publish_group(client, keys, g)
    registry = CollectorRegistry()
    learner = _learner(client, _config(run, tmp_path, **{"learner.batch_groups": 1, "algorithm.method": '"hsd"'}),
                       tiny_model_dir, registry).start()
    learner.run(steps=4)  # good[0..3]: one group a step; no_user is dead-lettered when batched
    for g in (good[1], good[4]):  # a repeat of a trained group, then a new one
        publish_group(client, keys, g)
    learner.run(steps=5)
    learner.close()
    reasons = sorted(f[b"reason"].decode() for _, f in client.xrange(keys.deadletter))
    assert reasons == ["group_size", "out_of_range", "unusable"]
    dropped = {r: registry.get_sample_value("hsd_replay_dropped_total", {"reason": r}) for r in ("malformed", "duplicate")}
    assert dropped == {"malformed": 3, "duplicate": 2}
    assert learner.trained_groups == 5
    assert client.scard(keys.trained) == 5
    # one hand-over to the publisher per step, the start-up's not counted; each published
    assert registry.get_sample_value("hsd_weights_publish_blocked_seconds_count") == 5
    assert registry.get_sample_value("hsd_weights_publish_lag_seconds_count") == 6
    assert registry.get_sample_value("hsd_weights_version") == learner.version
    assert len(hostile) + 2 == learner.trained_groups + sum(dropped.values())
    assert client.xlen(keys.rollouts) == 0
    # the run's accounting is kept in Redis: a restarted learner reports the same totals
    config = _config(run, tmp_path, **{"learner.batch_groups": 1})
    later = _learner(client, config, tiny_model_dir).summary()
    assert later["trained_groups"] == 5
    assert later["dropped"] == {"duplicate": 2, "malformed": 3}


@pytest.mark.slow
def test_a_resume_drops_what_lost_versions_generated_and_actors_follow_the_new_learner(
        client, tiny_model_dir, tmp_path):
    """Kill the learner after a checkpoint; an actor that loaded a later version goes on
    sampling with it; the resumed learner (on another port) trains none of those groups,
    and the actor moves to it and samples with its weights."""
    run = "lost"
    keys = Keys(run)
    config = _config(run, tmp_path)  # checkpoint every 2 steps, 2 groups a step
    registry = CollectorRegistry()
    for g in real_groups(tiny_model_dir, 6, run=run):  # version 0, three steps' worth
        publish_group(client, keys, g)
    first = _learner(client, config, tiny_model_dir).start()
    actor = Actor(config, client, HFEngine.from_pretrained(str(tiny_model_dir)), make_task("arith"),
                  actor_id="a0", metrics=ActorMetrics(CollectorRegistry()))
    actor.join()
    for _ in range(3):
        first.train(first.replay.next_batch(first.version, timeout_s=5))
    def loaded(version: int) -> bool:
        actor.follower.sync()  # loads the newest announced version, if newer
        return actor.engine.version == version

    wait_until(lambda: loaded(3), 60, "the actor never loaded version 3")
    old_address = first.weights.address
    first.close()  # as good as kill -9: step 3 (version 3) was never checkpointed
    del first

    def sample(n: int) -> list:
        before = client.xlen(keys.rollouts)
        _admit(client, run, n)
        wait_until(lambda: actor.step(block_ms=200) is not None and client.xlen(keys.rollouts) >= before + n,
                   120, "the actor did not sample the admitted prompts", interval_s=0)
        return [decode_group(f[ROLLOUT_FIELD]) for _, f in client.xrange(keys.rollouts)][before:]

    assert {g.policy_version for g in sample(2)} == {3}  # the lost future: sampled while the learner is down
    resumed = _learner(client, config, tiny_model_dir, registry).start()
    assert (resumed.step, resumed.version, resumed.replay.lost_versions) == (2, 4, [(3, 3)])
    assert resumed.weights.address != old_address
    wait_until(lambda: loaded(4), 60, "the actor did not follow the resumed learner to version 4")
    assert {g.policy_version for g in sample(2)} == {4}
    resumed.run(steps=4)  # step 3 retrains the uncheckpointed version-0 groups, step 4 the version-4 ones
    actor.stop()
    resumed.close()
    assert registry.get_sample_value("hsd_replay_dropped_total", {"reason": "lost"}) == 2
    assert resumed.trained_groups == 4 and client.xlen(keys.rollouts) == 0
    # step 3 at version 4 (the version-0 groups), step 4 at version 5 (the actor's version-4 groups)
    assert resumed.history["staleness"][-2:] == [4, 1]


def _admit(client, run: str, n: int) -> None:
    keys = Keys(run)
    ensure_group(client, keys.prompts, ACTORS_GROUP)
    problems = ArithTask().problems("train", seed=2)
    for _ in range(n):
        p = next(problems)
        client.xadd(keys.prompts, {PROMPT_FIELD: encode_prompt(PromptItem(p.prompt_id, "arith", p.prompt, p.answer, 0))})


def test_lora_trains_only_its_adapters_publishes_them_merged_and_resumes_them(client, tiny_model_dir, tmp_path):
    """learner.lora_rank: the base weights stay as loaded, the checkpoint's model is a plain
    model computing what the adapted one computes, and a resume (base from model.path,
    adapters from the checkpoint) ends where an uninterrupted run does."""
    groups = real_groups(tiny_model_dir, 8)
    lora = {"learner.lora_rank": 4, "learner.lora_alpha": 8}

    def trained(run: str, stops: tuple[int, ...]) -> Learner:
        for g in groups:
            publish_group(client, Keys(run), RolloutGroup(**{**g.__dict__, "run": run}))
        for steps in stops:  # each a learner process: closed after its steps, the next one resumes
            learner = _learner(client, _config(run, tmp_path, **lora), tiny_model_dir).start()
            learner.run(steps=steps)
            learner.close()
        return learner

    whole = trained("lora-whole", (4,))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    adapted = whole.model.state_dict()
    trainable = {n for n, p in whole.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    for name, tensor in adapted.items():
        if ".lora_" not in name:  # every base weight as loaded
            assert torch.equal(tensor, base[name.replace(".base_layer.", ".")]), name
    checkpoint = tmp_path / "lora-whole" / "checkpoints" / "step-000004" / "model"
    merged = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert set(merged.state_dict()) == set(base)
    assert any(not torch.equal(merged.state_dict()[k], base[k]) for k in base)  # the adapters' update is in it
    ids = torch.tensor([groups[0].prompt_ids.tolist() + groups[0].samples[0].ids.tolist()])
    whole.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, whole.model(ids).logits, rtol=1e-4, atol=1e-5)

    resumed = trained("lora-resumed", (2, 4))
    assert resumed.step == 4
    for name, tensor in resumed.model.state_dict().items():
        torch.testing.assert_close(tensor, adapted[name], rtol=1e-5, atol=1e-6, msg=name)


def test_lora_target_modules_the_model_lacks_fail_naming_the_field(tiny_model_dir):
    from learner.lora import add_adapters
    from services.errors import StartupError

    config = load_config(environ={}, overrides=["learner.lora_rank=4", 'learner.lora_target_modules="qq_proj"'])
    with pytest.raises(StartupError, match=r"^learner\.lora_target_modules: 'qq_proj': .*not found"):
        add_adapters(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config.learner)
