"""The Method interface: the registry matches the config, each method's checks, and each
loss against the same formula computed here by hand on first-epoch tensors (r_t = 1)."""

from __future__ import annotations

import typing

import pytest
import torch

from core.config import AlgorithmConfig, Config, ConfigError, load_config, to_toml
from core.method_registry import METHOD_REGISTRY
from methods import METHODS, configure, make_method
from methods.base import LossTerms
from methods.peers import PeerSource, PeerTag

B, T, V = 2, 3, 5


def test_every_configurable_method_is_registered_and_named_alike():
    names = typing.get_args(AlgorithmConfig.model_fields["method"].annotation)
    assert names == tuple(METHOD_REGISTRY) == tuple(METHODS)
    assert all(cls.name == name for name, cls in METHODS.items())


def test_every_choice_of_a_method_reads_the_registry():
    """Config, `hsd run --method`, `hsd credit --method` and `hsd compare --arms` offer what
    the registry holds, so a registered method is offered everywhere with no other edit."""
    from services.apps.arms import ARMS
    from services.apps.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    run_method = next(a for a in commands["run"]._actions if a.dest == "method")
    credit_method = next(a for a in commands["credit"]._actions if a.dest == "method")
    assert list(run_method.choices) == list(METHOD_REGISTRY)
    assert list(credit_method.choices) == ["hsd", "opsd", "sdzero"]  # the ones whose teacher reads an input
    assert {m for m, e in METHOD_REGISTRY.items() if e.is_arm} <= set(ARMS) and "srt" not in ARMS
    assert {a.method for a in ARMS.values()} <= set(METHOD_REGISTRY)


def test_a_registry_entry_resolves_to_the_one_method_of_its_name(tmp_path, monkeypatch):
    from methods import _implementation

    (tmp_path / "twin_method.py").write_text(
        "from methods.grpo import GRPO\n\nclass Twin(GRPO):\n    name = 'twin'\n")
    (tmp_path / "no_method.py").write_text("from methods.grpo import GRPO\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    twin = _implementation("twin", "twin_method")
    assert twin.name == "twin" and issubclass(twin, METHODS["grpo"])
    # the imported GRPO is named grpo, not twin: only a subclass that names itself counts
    with pytest.raises(ImportError, match="no_method defines 0 Method subclasses named 'twin'"):
        _implementation("twin", "no_method")


def test_a_method_declares_what_its_loss_reads_of_the_teacher():
    assert make_method(AlgorithmConfig(method="hsd")).teacher_topk == 0
    assert make_method(AlgorithmConfig(method="hsd", loss="topk", topk=8)).teacher_topk == 8
    sdzero = load_config(environ={}, overrides=['algorithm.method="sdzero"'])
    configure(sdzero)
    assert make_method(sdzero.algorithm).teacher_topk == 64


def test_grpo_refuses_an_advantage_that_leaves_no_signal():
    with pytest.raises(ConfigError, match=r"^algorithm\.advantage: method grpo"):
        configure(Config(algorithm=AlgorithmConfig(method="grpo", advantage="none")))
    configure(Config(algorithm=AlgorithmConfig(method="hsd", advantage="none")))  # the teacher is the signal
    with pytest.raises(ValueError):
        make_method(AlgorithmConfig(method="grpo", advantage="none"))


def _terms(loss_form: str, teacher: bool) -> tuple[LossTerms, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, T, V, generator=g, requires_grad=True)
    ids = torch.randint(0, V, (B, T), generator=g)
    logp = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    raw = {
        "logp": logp, "logits": logits, "mask": mask,
        "w": torch.rand(B, T, generator=g) + 0.5,
        "state_w": torch.rand(B, T, generator=g) + 0.5,
        "outcome": torch.tensor([0.7, -1.3]),
        "teacher_logp": -torch.rand(B, T, generator=g) * 3,
        "teacher_logits": torch.randn(B, T, V, generator=g),
    }
    distilled = torch.tensor([True, False])
    top = raw["teacher_logits"].topk(2, -1)
    topk = teacher and loss_form == "topk"
    return LossTerms(
        logprobs=logp, old_logprobs=logp.detach(), mask=mask, is_weights=raw["w"],
        state_weights=raw["state_w"] if topk else None,
        outcome=raw["outcome"], distilled=distilled,
        teacher_logprobs=raw["teacher_logp"] if teacher and loss_form == "sampled" else None,
        teacher_topk_logits=top.values if topk else None,
        student_topk_logits=logits.gather(-1, top.indices) if topk else None,
        reference_logprobs=None,
        norm={"num_tokens": 5, "num_sequences": 2, "constant_length": 3}), raw


def _by_hand_pg(raw, advantages) -> torch.Tensor:
    """token_mean over 5 tokens of −w·A·r with r = π/π_old = 1 in the first epoch (no clip
    active; its gradient is −w·A·∇log π)."""
    ratio = torch.exp(raw["logp"] - raw["logp"].detach())
    return -(raw["w"] * advantages * ratio * raw["mask"]).sum() / 5


@pytest.mark.parametrize("lam", [0.0, 0.5, 2.0])
def test_sampled_credit_is_lambda_times_teacher_minus_student_on_distilled_samples(lam):
    terms, raw = _terms("sampled", teacher=True)
    method = make_method(AlgorithmConfig(method="hsd", credit_coef=lam))
    delta = raw["teacher_logp"] - raw["logp"].detach()
    advantages = raw["outcome"][:, None] + lam * delta * torch.tensor([[1.0], [0.0]])  # sample 1 has no teacher
    got, want = method.loss(terms), _by_hand_pg(raw, advantages)
    torch.testing.assert_close(got, want)
    g_got, = torch.autograd.grad(got, raw["logits"], retain_graph=True)
    g_want, = torch.autograd.grad(want, raw["logits"])
    torch.testing.assert_close(g_got, g_want)


def test_without_a_teacher_the_loss_is_the_outcome_policy_gradient():
    terms, raw = _terms("sampled", teacher=False)
    torch.testing.assert_close(make_method(AlgorithmConfig(method="grpo")).loss(terms),
                               _by_hand_pg(raw, raw["outcome"][:, None].expand(B, T)))


@pytest.mark.parametrize("lam", [0.0, 1.0, 3.0])
def test_topk_term_is_scaled_by_lambda_and_only_on_distilled_samples(lam):
    terms, raw = _terms("topk", teacher=True)
    method = make_method(AlgorithmConfig(method="sdzero", loss="topk", topk=2, topk_alpha=0.5, credit_coef=lam))
    # by hand: the teacher's top-2 at each position, both sides renormalised there
    top = raw["teacher_logits"].topk(2, -1).indices
    log_t = torch.log_softmax(raw["teacher_logits"].gather(-1, top), -1)
    log_s = torch.log_softmax(raw["logits"].gather(-1, top), -1)
    kl = 0.5 * (log_t.exp() * (log_t - log_s)).sum(-1) + 0.5 * (log_s.exp() * (log_s - log_t)).sum(-1)
    on = raw["mask"] & torch.tensor([[True], [False]])
    # the KL at a state is weighted by the state's prefix ratio, the sampled term by w_t
    want = _by_hand_pg(raw, raw["outcome"][:, None].expand(B, T)) + lam * (raw["state_w"] * kl * on).sum() / 5
    torch.testing.assert_close(method.loss(terms), want)


@pytest.mark.parametrize("loss_form", ["sampled", "topk"])
@pytest.mark.parametrize("beta", [0.01, 0.1])
def test_kl_penalty_to_the_initial_weights_enters_every_token_s_advantage(loss_form, beta):
    """A_t −= β·(log π_θold − log π_θ0): with the teacher's terms switched off (λ = 0) the
    loss is the outcome policy gradient with that penalty, for both loss forms."""
    terms, raw = _terms(loss_form, teacher=True)
    reference = -torch.rand(B, T, generator=torch.Generator().manual_seed(1)) * 2
    terms.reference_logprobs = reference
    method = make_method(AlgorithmConfig(method="hsd", loss=loss_form, credit_coef=0.0, kl_coef=beta))
    penalty = -beta * (raw["logp"].detach() - reference)
    want = _by_hand_pg(raw, raw["outcome"][:, None] + penalty)
    torch.testing.assert_close(method.loss(terms), want)
    terms.reference_logprobs = None  # the same terms without it: a different loss
    assert not torch.allclose(method.loss(terms), want)


def test_srt_trains_the_accepted_revisions_by_likelihood():
    terms, raw = _terms("sampled", teacher=False)
    got = make_method(AlgorithmConfig(method="srt")).loss(terms)
    torch.testing.assert_close(got, -(raw["logp"] * raw["mask"]).sum() / 5)


def test_rft_trains_its_own_successful_samples_by_likelihood(tokenizer):
    from tests.unit.core.records_factory import make_group

    group = make_group(g=4)  # samples 0 and 2 succeeded
    rft = make_method(AlgorithmConfig(method="rft"))
    samples = rft.training_samples(group, [PeerTag(PeerSource.NONE)] * 4, tokenizer)
    assert [s.index for s in samples] == [0, 2] and all(s.teacher is None and s.success for s in samples)
    assert samples[1].student.response == group.samples[2].ids.tolist()
    terms, raw = _terms("sampled", teacher=False)
    torch.testing.assert_close(rft.loss(terms), -(raw["logp"] * raw["mask"]).sum() / 5)


def test_only_srt_has_an_actor_side_stage(tokenizer):
    attempts, successes = [[40, 41], [42]], [False, True]
    for name, cls in METHODS.items():
        contexts = cls(AlgorithmConfig(method=name)).revision_contexts(tokenizer, "2+2?", attempts, successes)
        assert (contexts is not None) == (name == "srt"), name


def test_sdzero_takes_the_reference_phase_2_settings_where_the_run_sets_none(tmp_path):
    config = load_config(environ={}, overrides=['algorithm.method="sdzero"', "algorithm.topk_alpha=0.25"])
    configure(config)
    a = config.algorithm
    assert (a.loss, a.topk, a.advantage, a.teacher) == ("topk", 64, "none", "frozen")
    assert a.topk_alpha == 0.25  # set by the run: kept
    hsd = load_config(environ={}, overrides=['algorithm.method="hsd"'])
    configure(hsd)
    assert (hsd.algorithm.loss, hsd.algorithm.advantage, hsd.algorithm.teacher) == ("sampled", "grpo", "current")
    # what a run writes out (config.toml) and its processes read back is already resolved
    path = tmp_path / "config.toml"
    path.write_text(to_toml(config))
    again = load_config(path, environ={})
    configure(again)
    assert again.algorithm == a
