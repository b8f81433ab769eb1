"""The learner on the tiny real model: per-method steps, resume equivalence, poison."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry
from transformers import AutoModelForCausalLM, AutoTokenizer

from learner.batch import build_samples
from learner.context import reviser_context
from learner.service import Learner
from learner.trainer import TorchTrainer
from services.codec import encode_group
from services.config import load_config
from services.records import RolloutGroup, Sample
from services.streams import ROLLOUT_FIELD, Keys, publish_group
from tests.integration.batches import real_groups, tagged


@pytest.mark.parametrize(("method", "loss"), [
    ("grpo", "sampled"), ("hsd", "sampled"), ("hsd", "topk"), ("opsd", "sampled"), ("sdzero", "sampled"),
    ("sdzero", "topk"), ("srt", "sampled")])
def test_one_step_per_method_lowers_the_loss_on_a_fixed_batch(tiny_model_dir, method, loss):
    """Each method's objective goes down over steps on one batch: the PG surrogate (grpo),
    the NLL (srt), the top-k KL (topk), and for credit-as-advantage mean δ², of which that
    term's update is the gradient on a fixed batch (its surrogate's value moves with δ)."""
    distill = method in ("hsd", "opsd", "sdzero")
    config = load_config(environ={}, overrides=[
        f'algorithm.method="{method}"', f'algorithm.loss="{loss}"', "learner.lr=5e-5",
        'algorithm.teacher="frozen"', f'algorithm.advantage="{"none" if distill else "grpo"}"'])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    samples = build_samples(tagged(real_groups(tiny_model_dir, 3)), tok, config.algorithm)
    distilled = [s.teacher is not None for s in samples]
    assert any(distilled) == distill
    trainer = TorchTrainer(model, config, tok.pad_token_id)
    objective = "credit_sq" if distill and loss == "sampled" else "loss"
    losses = [trainer.train_step(samples).metrics[objective] for _ in range(6)]
    assert losses[-1] < losses[0], losses
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_srt_trains_the_accepted_revisions_after_their_reviser_context(tiny_model_dir):
    config = load_config(environ={}, overrides=['algorithm.method="srt"'])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    groups = real_groups(tiny_model_dir, 2)
    samples = build_samples(tagged(groups), tok, config.algorithm)
    accepted = [(g, i) for g in groups for i, s in enumerate(g.samples) if s.revision.success]
    assert len(samples) == len(accepted) == 4  # the revisions of the two wrong attempts per group
    for sample, (g, i) in zip(samples, accepted, strict=True):
        s = g.samples[i]
        context = reviser_context(tok, g.prompt, s.ids.tolist(), s.success)
        assert sample.student.ids == context + s.revision.ids.tolist() and sample.student.start == len(context)
        assert sample.teacher is None and sample.advantage == 0.0
        assert torch.equal(sample.behaviour, torch.from_numpy(s.revision.logprobs))
        assert not s.success  # only wrong attempts were revised into right ones here
    trainer = TorchTrainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config, tok.pad_token_id)
    none_accepted = build_samples(tagged([RolloutGroup(**{**groups[0].__dict__, "samples": tuple(
        Sample(**{**s.__dict__, "revision": None}) for s in groups[0].samples)})]), tok, config.algorithm)
    assert none_accepted == [] and trainer.train_step(none_accepted).metrics["loss"] == 0.0


def _learner(client, config, model_dir, registry=None) -> Learner:
    return Learner(config, client, str(model_dir), resume=True, registry=registry or CollectorRegistry(),
                   prompts=iter(()))


def _config(run: str, tmp_path, **extra):
    overrides = [f'run.name="{run}"', f'run.dir="{tmp_path / run}"', "learner.batch_groups=2",
                 "learner.checkpoint_every=2", "learner.max_staleness=100", "learner.lr=1e-3",
                 "weights.keep_versions=2", "metrics.enabled=false"]
    return load_config(environ={}, overrides=overrides + [f"{k}={v}" for k, v in extra.items()])


def _weights(learner: Learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.model.state_dict().items()}


@pytest.mark.slow
def test_resume_and_crash_recovery_end_with_the_uninterrupted_weights(client, tiny_model_dir, tmp_path):
    groups = real_groups(tiny_model_dir, 8)

    def publish(run):
        for g in groups:
            publish_group(client, Keys(run), RolloutGroup(**{**g.__dict__, "run": run}))

    # uninterrupted: 4 steps
    publish("whole")
    whole = _learner(client, _config("whole", tmp_path), tiny_model_dir).start()
    whole.run(steps=4)
    want = _weights(whole)
    whole.close()

    # 3 steps, then a "kill -9": step 3 was trained but never checkpointed or acknowledged
    publish("crash")
    first = _learner(client, _config("crash", tmp_path), tiny_model_dir).start()
    for _ in range(3):
        first.train(first.replay.next_batch(first.version, timeout_s=5))
    assert first.step == 3 and client.xlen(Keys("crash").rollouts) == 4  # steps 3-4's groups pending
    first.close()
    del first
    resumed = _learner(client, _config("crash", tmp_path), tiny_model_dir).start()
    assert (resumed.step, resumed.version) == (2, 2)  # from the checkpoint, not from memory
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
