"""Teacher contexts on a real tiny Qwen3 model: y is never re-tokenized, and the log-probs
read at y's positions equal a direct forward pass over the explicitly concatenated ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.config import AlgorithmConfig, ConfigError, load_config
from core.prompts import render_prompt_ids
from core.records import Revision, Sample
from core.views import VocabularyMismatch, assert_shared_vocabulary, student_input
from learner.logprobs import score_responses
from methods import METHODS as REGISTRY
from methods import configure
from methods.hsd import hsd_input
from methods.opsd import opsd_input
from methods.peers import CarriedPeer, NoPeer, PeerSource, PeerTag
from methods.sdzero import sdzero_input
from methods.templates import DEFAULT
from tests.unit.core.records_factory import make_group

PROMPT = "Compute 12+7*3 step by step."
PEER = "7*3=21, 12+21=33. #### 33"
ANSWER = "33"


def _template_ids(tokenizer, user_text: str) -> list[int]:
    """The chat template rendered by hand, independently of core.prompts."""
    text = f"<|im_start|>user\n{user_text}<|im_end|>\n<|im_start|>assistant\n"
    return tokenizer.encode(text, add_special_tokens=False)


@pytest.fixture(scope="module")
def response(tokenizer):
    """A y whose ids do not survive the record's text (decoded without special tokens) being
    encoded again: <unk>, <|im_start|> and an EOS end."""
    text_ids = tokenizer.encode("7*3=20, 12+20=32. #### 32", add_special_tokens=False)
    odd = [tokenizer.unk_token_id, tokenizer.convert_tokens_to_ids("<|im_start|>")]
    y = text_ids[:5] + odd + text_ids[5:] + [tokenizer.eos_token_id]
    assert tokenizer.encode(tokenizer.decode(y, skip_special_tokens=True), add_special_tokens=False) != y
    return y


def _direct_logprobs(model, ids: list[int], start: int, n: int) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return torch.stack([logp[start + t - 1, ids[start + t]] for t in range(n)])


def _explicit(method: str, tokenizer, y: list[int]) -> list[int]:
    if method == "student":
        return render_prompt_ids(tokenizer, PROMPT) + y
    if method == "opsd":
        return _template_ids(tokenizer, PROMPT + DEFAULT.answer.format(answer=ANSWER) + DEFAULT.closing) + y
    if method == "hsd":
        return _template_ids(tokenizer, PROMPT + DEFAULT.peer.format(peer=PEER) + DEFAULT.closing) + y
    if method == "hsd+answer":
        return _template_ids(tokenizer, PROMPT + DEFAULT.peer.format(peer=PEER)
                             + DEFAULT.answer.format(answer=ANSWER) + DEFAULT.closing) + y
    assert method.startswith("sdzero")
    success = method.endswith("ok")
    phrase = tokenizer.encode("\n\n" + DEFAULT.revision(success) + "\n\n", add_special_tokens=False)
    return _template_ids(tokenizer, PROMPT) + y[:-1] + phrase + y  # first copy drops the EOS


def _built(method: str, tokenizer, y: list[int]):
    if method == "student":
        return student_input(render_prompt_ids(tokenizer, PROMPT), y)
    if method == "opsd":
        return opsd_input(tokenizer, PROMPT, y, ANSWER)
    if method == "hsd":
        return hsd_input(tokenizer, PROMPT, y, PEER)
    if method == "hsd+answer":
        return hsd_input(tokenizer, PROMPT, y, PEER, answer=ANSWER)
    return sdzero_input(tokenizer, PROMPT, y, success=method.endswith("ok"))


VIEWS = ["student", "opsd", "hsd", "hsd+answer", "sdzero-ok", "sdzero-wrong"]


@pytest.mark.parametrize("method", VIEWS)
def test_builder_equals_explicit_concatenation_and_keeps_y_verbatim(method, tokenizer, response):
    built = _built(method, tokenizer, response)
    assert built.ids == _explicit(method, tokenizer, response)
    assert built.response == response
    assert built.ids[built.start :] == response


def test_batched_teacher_logprobs_equal_direct_forward_passes(tokenizer, tiny_model, response):
    inputs = [_built(m, tokenizer, response) for m in VIEWS]
    short = student_input(render_prompt_ids(tokenizer, "1+1?"), response[:3])  # a shorter row
    inputs.append(short)
    with torch.no_grad():
        logprobs, logits, mask = score_responses(tiny_model, inputs, tokenizer.pad_token_id)
    assert logits.shape[:2] == mask.shape
    for row, x in enumerate(inputs):
        direct = _direct_logprobs(tiny_model, x.ids, x.start, x.length)
        assert mask[row].sum().item() == x.length
        torch.testing.assert_close(logprobs[row, : x.length], direct, atol=2e-5, rtol=1e-4)
    # the methods really differ in what the teacher sees: their log-probs are not all equal
    rows = {tuple(np.round(logprobs[i, : len(response)].numpy(), 4)) for i in range(len(VIEWS))}
    assert len(rows) == len(VIEWS)


def test_sdzero_first_copy_drops_only_trailing_stop_tokens(tokenizer):
    y = tokenizer.encode("abc", add_special_tokens=False)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    with_stop = sdzero_input(tokenizer, PROMPT, y + [eos, pad], success=True)
    plain = sdzero_input(tokenizer, PROMPT, y, success=True)
    assert with_stop.ids[: plain.start] == plain.ids[: plain.start]
    assert with_stop.response == y + [eos, pad]
    text = tokenizer.decode(plain.ids[: plain.start])
    assert text.endswith("abc\n\nLet me rephrase the above solution.\n\n")
    wrong = tokenizer.decode(sdzero_input(tokenizer, PROMPT, y, success=False).ids)
    assert "Wait, this response is wrong. Let me correct it." in wrong


def test_the_configured_wording_reaches_every_teacher_and_the_reviser(tokenizer):
    config = load_config(environ={}, overrides=[
        'algorithm.peer_template="\\n\\nSo loest man es:\\n{peer}"', 'algorithm.answer_template=" (Antwort {answer})"',
        'algorithm.teacher_closing="\\n\\nJetzt du."', 'algorithm.revision_wrong="Falsch. Noch einmal."',
        'algorithm.revision_right="Richtig. Anders gesagt:"'])
    group = make_group(prompt=PROMPT, answer=ANSWER)
    success = [s.success for s in group.samples]
    failed, right = success.index(False), success.index(True)
    tag = PeerTag(PeerSource.GROUP, index=right)
    text = {}
    for name in ("hsd", "opsd", "sdzero"):
        algo = AlgorithmConfig(**{**config.algorithm.model_dump(), "method": name})
        view = REGISTRY[name](algo).teacher_view(tokenizer, group, failed, tag)
        text[name] = tokenizer.decode(view.ids[: view.start])
    assert "So loest man es:" not in text["opsd"] and " (Antwort 33)\n\nJetzt du." in text["opsd"]
    assert "So loest man es:\n" + group.samples[right].text + "\n\nJetzt du." in text["hsd"]
    assert text["sdzero"].endswith("\n\nFalsch. Noch einmal.\n\n") and "Wait" not in text["sdzero"]
    srt = REGISTRY["srt"](AlgorithmConfig(**{**config.algorithm.model_dump(), "method": "srt",
                                              "srt_revise_correct": True}))
    contexts = srt.revision_contexts(tokenizer, PROMPT, [s.ids.tolist() for s in group.samples], success)
    assert tokenizer.decode(contexts[right]).endswith("\n\nRichtig. Anders gesagt:\n\n")  # what the actor samples from


@pytest.mark.parametrize(("override", "needle"), [
    ('algorithm.peer_template="Here: {solution}"', r"peer_template: must hold \{peer\} and no other field"),
    ('algorithm.answer_template="no field"', r"answer_template: must hold \{answer\}"),
    ('algorithm.peer_template="{peer"', r"peer_template: .*"),
])
def test_a_template_without_its_field_fails_at_start(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(environ={}, overrides=[override])


def test_without_a_chat_template_messages_are_joined(tokenizer):
    plain = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    plain.chat_template = None
    ids = render_prompt_ids(plain, [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert plain.decode(ids) == "S\n\nU\n\n"
    built = opsd_input(plain, "U", [5, 6], "42")
    assert plain.decode(built.ids[: built.start]) == "U" + DEFAULT.answer.format(answer="42") + DEFAULT.closing + "\n\n"


def test_chat_messages_get_the_context_on_the_last_user_turn(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    text = tokenizer.decode(opsd_input(tokenizer, messages, [5], ANSWER).ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n" + PROMPT
                           + DEFAULT.answer.format(answer=ANSWER))


def _group(response, answer=ANSWER):
    """Sample 0 is the failed y, sample 1 the successful peer whose text is PEER."""
    failed = Sample(np.asarray(response, np.int32), np.zeros(len(response), np.float32), 0.0, False, "stop", "wrong")
    peer = Sample(np.asarray([5, 6], np.int32), np.zeros(2, np.float32), 1.0, True, "stop", PEER)
    return make_group(prompt=PROMPT, answer=answer, samples=(failed, peer))


def test_each_method_builds_its_teacher_view_from_the_peer_tag(tokenizer, response):
    algo = AlgorithmConfig()
    hsd, group = REGISTRY["hsd"](algo), _group(response)
    in_group = PeerTag(PeerSource.GROUP, index=1)
    assert hsd.teacher_view(tokenizer, group, 0, in_group).ids == hsd_input(tokenizer, PROMPT, response, PEER).ids
    bank = PeerTag(PeerSource.BANK, carried=CarriedPeer(np.zeros(1, np.int32), "banked", "g", 1),
                   reason=NoPeer.NO_SUCCESS)
    assert "banked" in tokenizer.decode(hsd.teacher_view(tokenizer, group, 0, bank).ids)
    answer = PeerTag(PeerSource.ANSWER, reason=NoPeer.NO_SUCCESS)
    assert hsd.teacher_view(tokenizer, group, 0, answer).ids == opsd_input(tokenizer, PROMPT, response, ANSWER).ids
    none = PeerTag(PeerSource.NONE, reason=NoPeer.NO_SUCCESS)
    assert hsd.teacher_view(tokenizer, group, 0, none) is None
    with_answer = REGISTRY["hsd"](AlgorithmConfig(peer_with_answer=True))
    assert with_answer.teacher_view(tokenizer, group, 0, in_group).ids == \
        hsd_input(tokenizer, PROMPT, response, PEER, ANSWER).ids
    opsd = REGISTRY["opsd"](algo)
    assert opsd.teacher_view(tokenizer, group, 0, in_group).ids == opsd_input(tokenizer, PROMPT, response, ANSWER).ids
    assert opsd.teacher_view(tokenizer, _group(response, answer=None), 0, in_group) is None
    assert REGISTRY["sdzero"](algo).teacher_view(tokenizer, group, 0, in_group).ids == \
        sdzero_input(tokenizer, PROMPT, response, False).ids
    assert REGISTRY["grpo"](algo).teacher_view(tokenizer, group, 0, in_group) is None


@pytest.mark.parametrize(("method", "distill", "distilled"), [
    ("hsd", None, [True, False]),  # the paper's setting: failed attempts only
    ("hsd", "all", [True, True]),  # a success is distilled toward another peer when asked
    ("opsd", None, [True, True]),
    ("opsd", "failed", [True, False]),  # the ablation that changes only the context against HSD
])
def test_distill_selects_the_samples_a_teacher_rescores(tokenizer, response, method, distill, distilled):
    overrides = [f'algorithm.method="{method}"'] + ([f'algorithm.distill="{distill}"'] if distill else [])
    config = load_config(environ={}, overrides=overrides)
    configure(config)
    tags = [PeerTag(PeerSource.GROUP, index=1), PeerTag(PeerSource.GROUP, index=0)]
    samples = REGISTRY[method](config.algorithm).training_samples(_group(response), tags, tokenizer)
    assert [s.teacher is not None for s in samples] == distilled
    if method == "hsd" and distilled[1]:
        assert samples[1].teacher.ids == hsd_input(tokenizer, PROMPT, [5, 6], "wrong").ids


def test_vocabulary_equality_is_asserted(tokenizer):
    assert_shared_vocabulary(tokenizer, tokenizer)
    other = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    assert_shared_vocabulary(tokenizer, other)
    other.add_tokens(["<extra>"])
    with pytest.raises(VocabularyMismatch, match="1 only in the teacher"):
        assert_shared_vocabulary(tokenizer, other)


def _srt_group(response, revision_ids, *, attempt_ok, revision_ok):
    """One attempt (``response``, its μ = −0.1·(t+1)) with one scored revision (μ = −0.5)."""
    rev = Revision(np.asarray(revision_ids, np.int32), np.full(len(revision_ids), -0.5, np.float32),
                   float(revision_ok), revision_ok, "rev")
    attempt = Sample(np.asarray(response, np.int32), -0.1 * np.arange(1, len(response) + 1, dtype=np.float32),
                     float(attempt_ok), attempt_ok, "stop", "attempt", rev)
    return make_group(prompt=PROMPT, samples=(attempt,))


def test_srt_stages_are_built_token_by_token_from_a_wrong_attempt_and_its_accepted_revision(tokenizer, response):
    """Stage 1: x → y_init ++ P_r ++ y_rev; stage 2: x ++ y_init ++ P_r → y_rev (the
    reference's prepare_data.py), the attempt without its trailing EOS, the phrase for r = 0."""
    revision = tokenizer.encode("7*3=21, 12+21=33. #### 33", add_special_tokens=False) + [tokenizer.eos_token_id]
    samples = REGISTRY["srt"](AlgorithmConfig(method="srt")).training_samples(
        _srt_group(response, revision, attempt_ok=False, revision_ok=True), [PeerTag(PeerSource.NONE)], tokenizer)
    x = _template_ids(tokenizer, PROMPT)
    phrase = tokenizer.encode("\n\nWait, this response is wrong. Let me correct it.\n\n", add_special_tokens=False)
    stream = response[:-1] + phrase + revision
    stage2, stage1 = (s.student for s in samples)
    assert (stage1.ids, stage1.start, stage1.length) == (x + stream, len(x), len(stream))
    assert (stage2.ids, stage2.start, stage2.length) == (x + stream, len(x + response[:-1] + phrase), len(revision))
    # μ: the attempt's as sampled (its EOS dropped with it), the forced phrase log μ = 0, the revision's
    mu = [-0.1 * (t + 1) for t in range(len(response) - 1)] + [0.0] * len(phrase) + [-0.5] * len(revision)
    torch.testing.assert_close(samples[1].behaviour, torch.tensor(mu))
    torch.testing.assert_close(samples[0].behaviour, torch.full((len(revision),), -0.5))
    assert all(s.teacher is None and s.advantage == 0.0 for s in samples)


@pytest.mark.parametrize(("attempt_ok", "revision_ok", "revise_correct", "stages"), [
    (False, False, False, 0),  # a revision the verifier refused trains nothing
    (True, True, False, 0),  # a right attempt is not revised by default
    (True, True, True, 1),  # with srt_revise_correct: stage 2 only (stage 1 is for mistakes)
    (False, True, True, 2),
])
def test_srt_trains_which_revisions(tokenizer, response, attempt_ok, revision_ok, revise_correct, stages):
    srt = REGISTRY["srt"](AlgorithmConfig(method="srt", srt_revise_correct=revise_correct))
    group = _srt_group(response, [5, 6, tokenizer.eos_token_id], attempt_ok=attempt_ok, revision_ok=revision_ok)
    samples = srt.training_samples(group, [PeerTag(PeerSource.NONE)], tokenizer)
    assert len(samples) == stages
    if stages == 1:
        assert samples[0].student.ids[-3:] == [5, 6, tokenizer.eos_token_id] and samples[0].student.length == 3
        assert DEFAULT.revision_right in tokenizer.decode(samples[0].student.ids)


def test_srt_actors_revise_wrong_attempts_unless_asked_for_right_ones_too(tokenizer):
    from methods.sdzero import reviser_context

    attempts, successes = [[40, 41], [42]], [False, True]
    default = REGISTRY["srt"](AlgorithmConfig(method="srt")).revision_contexts(tokenizer, PROMPT, attempts, successes)
    assert default == [reviser_context(tokenizer, PROMPT, [40, 41], False), None]
    both = REGISTRY["srt"](AlgorithmConfig(method="srt", srt_revise_correct=True))
    assert both.revision_contexts(tokenizer, PROMPT, attempts, successes) == \
        [reviser_context(tokenizer, PROMPT, a, s) for a, s in zip(attempts, successes, strict=True)]


THINKING_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                     "<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}"
                     "<think></think>{% endif %}")


def test_chat_template_arguments_reach_every_prompt_the_learner_renders(tiny_model_dir, tmp_path):
    """Qwen3's thinking switch: model.chat_template_kwargs, bound where the learner loads its
    tokenizer, reaches the student's prompt and every teacher's context alike."""
    import shutil

    from learner.service import load_trainer

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").write_text(THINKING_TEMPLATE)
    off = load_config(environ={}, overrides=[f'model.path="{model}"', f'run.dir="{tmp_path / "run"}"',
                                             "model.chat_template_kwargs={enable_thinking = false}"])
    tokenizer = load_trainer(off, str(model), resume=False)[2]
    assert tokenizer.decode(render_prompt_ids(tokenizer, PROMPT)).endswith("assistant\n<think></think>")
    teacher = hsd_input(tokenizer, PROMPT, [5, 6], PEER)
    assert tokenizer.decode(teacher.ids[: teacher.start]).endswith("assistant\n<think></think>")
    plain = load_trainer(load_config(environ={}, overrides=[f'run.dir="{tmp_path / "run"}"']), str(model),
                         resume=False)[2]
    assert tokenizer.decode(render_prompt_ids(plain, PROMPT)).endswith("assistant\n")
