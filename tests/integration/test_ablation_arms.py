"""The ablation arms of `hsd compare` as configs of the real learner parts: the peer swapped
for a placebo or the reference solution, and the KL penalty to θ0 with its own copy of the
initial weights, kept across a checkpoint."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.config import ConfigError, load_config
from core.tasks.arith import ArithTask
from learner.batch import ReferencePeers, build_samples, peer_is_reference, with_peer_source
from learner.logprobs import score_responses
from learner.teacher import FrozenTeacher
from learner.trainer import TorchTrainer
from methods import configure, make_method
from methods.peers import PeerSource
from tests.integration.batches import real_groups, tagged


def _config(*overrides: str):
    config = load_config(environ={}, overrides=list(overrides))
    configure(config)
    return config


def test_reference_and_placebo_peers_reach_hsd_s_teacher_views(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = tagged(real_groups(tiny_model_dir, 3))
    hsd = make_method(_config('algorithm.method="hsd"').algorithm)
    views = {s.group_id + str(s.index): s for s in build_samples(batch, tok, hsd)}
    # on arith every success is the reference solution: the reference arm's teacher reads
    # the same context as HSD's; the placebo's reads another prompt's solution
    reference = with_peer_source(batch, "reference", ReferencePeers(ArithTask(), tok), seed=0)
    placebo = with_peer_source(batch, "placebo", None, seed=0)
    assert all(t.source is PeerSource.REFERENCE for g in reference for t, s in zip(g.tags, g.group.samples,
                                                                                    strict=True) if not s.success)
    distilled = 0
    for arm, same in ((reference, True), (placebo, False)):
        for s in build_samples(arm, tok, hsd):
            base = views[s.group_id + str(s.index)]
            assert (s.teacher is None) == (base.teacher is None)  # the same samples distilled
            if s.teacher is not None:
                distilled += 1
                assert (s.teacher.ids == base.teacher.ids) is same
                assert s.student.ids == base.student.ids
    assert distilled == 2 * 2 * 3  # two failed samples a group, both arms


def test_a_prompt_the_task_cannot_look_up_has_no_reference(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    (group,) = real_groups(tiny_model_dir, 1)
    lookup = ReferencePeers(ArithTask(), tok)
    assert lookup(group).text == ArithTask().problem(group.prompt_id).reference
    from dataclasses import replace

    assert lookup(replace(group, prompt_id="not-an-arith-prompt")) is None


def test_the_share_of_in_group_peers_that_are_the_reference_solution(tiny_model_dir):
    from dataclasses import replace

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = tagged(real_groups(tiny_model_dir, 3))
    lookup = ReferencePeers(ArithTask(), tok)
    peered = [sum(t.source is PeerSource.GROUP for t in g.tags) for g in batch]
    assert min(peered) > 0
    assert peer_is_reference(batch, lookup) == 1.0  # on arith every success is the reference
    first = batch[0].group
    another_path = replace(batch[0], group=replace(first, samples=[
        replace(s, text=s.text + " Checked.") if s.success else s for s in first.samples]))
    assert peer_is_reference([another_path, *batch[1:]], lookup) == pytest.approx(1 - peered[0] / sum(peered))
    assert peer_is_reference(batch, lambda group: None) is None  # a task without references


def test_peer_sources_are_refused_for_methods_whose_teacher_reads_no_peer():
    for method in ("grpo", "opsd", "sdzero"):
        with pytest.raises(ConfigError, match="algorithm.peer_source"):
            _config(f'algorithm.method="{method}"', 'algorithm.peer_source="placebo"')
    assert _config('algorithm.method="hsd"', 'algorithm.peer_source="placebo"').algorithm.distill == "failed"


def _trained(tiny_model_dir, samples, tok, beta: float, steps: int = 6) -> tuple[list[float], TorchTrainer]:
    config = _config('algorithm.method="grpo"', f"algorithm.kl_coef={beta}", "learner.lr=3e-3")
    trainer = TorchTrainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config, tok.pad_token_id)
    return [trainer.train_step(samples).metrics["reference_kl"] for _ in range(steps)], trainer


def _distance_from_theta0(trainer: TorchTrainer, samples, pad_id: int) -> float:
    """Mean |log π_θ(y_t) − log π_θ0(y_t)| over the batch's tokens."""
    inputs = [s.student for s in samples]
    with torch.no_grad():
        now, _, mask = score_responses(trainer.model.eval(), inputs, pad_id)
        start, _, _ = score_responses(trainer.reference.copy, inputs, pad_id)
    return float(((now - start).abs() * mask).sum() / mask.sum())


def test_the_kl_penalty_holds_the_policy_nearer_its_initial_weights(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    samples = build_samples(tagged(real_groups(tiny_model_dir, 3)), tok, make_method(_config().algorithm))
    weak_kl, weak = _trained(tiny_model_dir, samples, tok, beta=1e-6)
    strong_kl, strong = _trained(tiny_model_dir, samples, tok, beta=3.0)
    assert weak_kl[0] == pytest.approx(0.0, abs=1e-6)  # the first step is scored at θ0
    assert weak_kl[-1] != pytest.approx(0.0, abs=1e-3)  # then the policy has moved
    far, near = _distance_from_theta0(weak, samples, tok.pad_token_id), _distance_from_theta0(
        strong, samples, tok.pad_token_id)
    assert near < 0.7 * far, (far, near)
    # a `current` teacher has no θ0: the penalty keeps a copy of its own
    assert isinstance(strong.reference, FrozenTeacher) and strong.reference is not strong.teacher


def test_the_initial_weights_survive_a_checkpoint(tiny_model_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    samples = build_samples(tagged(real_groups(tiny_model_dir, 2)), tok, make_method(_config().algorithm))
    _, trained = _trained(tiny_model_dir, samples, tok, beta=0.1, steps=2)
    trained.save_state(tmp_path)
    # a resumed learner starts from the trained weights: θ0 must come from the checkpoint
    resumed = TorchTrainer(trained.model, trained.config, tok.pad_token_id)
    theta0 = dict(trained.reference.copy.named_parameters())
    assert any(not torch.equal(p, theta0[n]) for n, p in resumed.reference.copy.named_parameters())
    resumed.load_state(tmp_path)
    for n, p in resumed.reference.copy.named_parameters():
        torch.testing.assert_close(p, theta0[n], msg=n)
    without = TorchTrainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), _config(), tok.pad_token_id)
    without.save_state(tmp_path)
    with pytest.raises(ValueError, match="no initial weights"):
        resumed.load_state(tmp_path)


def test_the_kl_penalty_pulls_towards_a_reference_model_of_its_own(tiny_model_dir, tmp_path):
    from learner.tiny_model import build_tiny_model

    other = build_tiny_model(tmp_path / "other", seed=1)  # other weights, the same tokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    samples = build_samples(tagged(real_groups(tiny_model_dir, 2)), tok, make_method(_config().algorithm))
    config = _config('algorithm.method="grpo"', "algorithm.kl_coef=0.1", f'algorithm.kl_reference="{other}"',
                     f'model.path="{tiny_model_dir}"')
    trainer = TorchTrainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config, tok.pad_token_id)
    want = AutoModelForCausalLM.from_pretrained(other).state_dict()
    assert all(torch.equal(t, want[n]) for n, t in trainer.reference.copy.state_dict().items())
    # at the first step the policy is θ0, which is not the reference: the penalty is on at once
    assert trainer.train_step(samples).metrics["reference_kl"] > 0.01  # against θ0 it is 0 (the test above)

    stranger = tmp_path / "stranger"  # the same model with a tokenizer that has one more token
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(stranger)
    grown = AutoTokenizer.from_pretrained(tiny_model_dir)
    grown.add_tokens(["<extra>"])
    grown.save_pretrained(stranger)
    from services.errors import StartupError

    with pytest.raises(StartupError, match=r"^algorithm\.kl_reference: .*vocabularies differ"):
        TorchTrainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), _config(
            "algorithm.kl_coef=0.1", f'algorithm.kl_reference="{stranger}"', f'model.path="{tiny_model_dir}"'),
            tok.pad_token_id)
    with pytest.raises(ConfigError, match="kl_reference is set but kl_coef is 0"):
        _config(f'algorithm.kl_reference="{other}"')
