from __future__ import annotations

import dataclasses
import math

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.codec import (
    LOGPROB_FLOOR,
    GroupLimits,
    Reason,
    RecordRejected,
    check_limits,
    decode_group,
    decode_prompt,
    encode_group,
    encode_prompt,
)
from core.records import SCHEMA_VERSION
from tests.unit.core.records_factory import make_group, make_prompt


def _raw_map(group=None) -> dict:
    return msgpack.unpackb(encode_group(group or make_group()), raw=False)


def _pack(m: dict) -> bytes:
    return msgpack.packb(m, use_bin_type=True)


def _rejected(raw: bytes, **kwargs) -> RecordRejected:
    with pytest.raises(RecordRejected) as info:
        decode_group(raw, **kwargs)
    return info.value


def test_group_round_trip_preserves_every_field():
    group = make_group()
    back = decode_group(encode_group(group), vocab_size=100, run="test")
    for name in ("run", "group_id", "prompt_id", "task", "actor", "created", "policy_version",
                 "prompt", "answer", "v"):
        assert getattr(back, name) == getattr(group, name), name
    np.testing.assert_array_equal(back.prompt_ids, group.prompt_ids)
    assert len(back.samples) == len(group.samples)
    for a, b in zip(back.samples, group.samples, strict=True):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.logprobs, b.logprobs)
        assert (a.reward, a.success, a.finish, a.text) == (b.reward, b.success, b.finish, b.text)
        assert (a.revision is None) == (b.revision is None)
    np.testing.assert_array_equal(back.samples[0].revision.ids, group.samples[0].revision.ids)
    assert back.samples[0].revision.text == "fix"


def test_arrays_travel_as_raw_little_endian_bytes():
    group = make_group()
    m = _raw_map(group)
    ids = m["samples"][1]["ids"]
    assert isinstance(ids, bytes)
    assert ids == group.samples[1].ids.astype("<i4").tobytes()
    assert m["samples"][1]["logprobs"] == group.samples[1].logprobs.astype("<f4").tobytes()


def test_prompt_round_trip_with_text_and_messages():
    for prompt in ("plain text", [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]):
        item = make_prompt(prompt=prompt)
        assert decode_prompt(encode_prompt(item)) == item


def test_a_prompt_s_sampling_seed_round_trips_and_an_older_producer_may_leave_it_out():
    item = make_prompt(sampling_seed=2**63 - 1)
    assert decode_prompt(encode_prompt(item)).sampling_seed == 2**63 - 1
    raw = msgpack.unpackb(encode_prompt(make_prompt()))
    assert raw["sampling_seed"] is None
    del raw["sampling_seed"]
    assert decode_prompt(msgpack.packb(raw)).sampling_seed is None
    raw["sampling_seed"] = "7"
    with pytest.raises(RecordRejected) as info:
        decode_prompt(msgpack.packb(raw))
    assert info.value.reason is Reason.BAD_TYPE and "sampling_seed" in str(info.value)


def test_empty_response_is_valid():
    m = _raw_map()
    m["samples"][0]["ids"] = b""
    m["samples"][0]["logprobs"] = b""
    assert decode_group(_pack(m)).samples[0].ids.size == 0


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda m: m.update(v=SCHEMA_VERSION + 1), Reason.WRONG_VERSION),
        (lambda m: m.pop("policy_version"), Reason.MISSING_FIELD),
        (lambda m: m.pop("answer"), Reason.MISSING_FIELD),
        (lambda m: m.pop("prompt"), Reason.MISSING_FIELD),
        (lambda m: m["samples"][1].pop("logprobs"), Reason.MISSING_FIELD),
        (lambda m: m["samples"][0]["revision"].pop("success"), Reason.MISSING_FIELD),
        (lambda m: m["samples"][1].update(logprobs=m["samples"][1]["logprobs"][:-4]), Reason.LENGTH_MISMATCH),
        (lambda m: m["samples"][1].update(ids=m["samples"][1]["ids"][:-1]), Reason.LENGTH_MISMATCH),
        (lambda m: m["samples"][1].update(logprobs=np.array([-1, np.nan, -1, -1, -1], "<f4").tobytes()), Reason.NON_FINITE),
        (lambda m: m["samples"][1].update(logprobs=np.array([-1, -np.inf, -1, -1, -1], "<f4").tobytes()), Reason.NON_FINITE),
        (lambda m: m["samples"][1].update(logprobs=np.array([-1, 0.5, -1, -1, -1], "<f4").tobytes()), Reason.BAD_VALUE),
        (lambda m: m["samples"][1].update(reward=math.nan), Reason.NON_FINITE),
        (lambda m: m["samples"][1].update(ids=np.array([1, 2, 100, 3, 4], "<i4").tobytes()), Reason.TOKEN_OUT_OF_RANGE),
        (lambda m: m["samples"][1].update(ids=np.array([1, 2, -1, 3, 4], "<i4").tobytes()), Reason.TOKEN_OUT_OF_RANGE),
        (lambda m: m.update(prompt_ids=np.array([500], "<i4").tobytes()), Reason.TOKEN_OUT_OF_RANGE),
        (lambda m: m["samples"][1].update(finish="eos"), Reason.BAD_VALUE),
        (lambda m: m.update(samples=[]), Reason.BAD_VALUE),
        (lambda m: m.update(policy_version=-1), Reason.BAD_VALUE),
        (lambda m: m.update(policy_version="7"), Reason.BAD_TYPE),
        (lambda m: m.update(policy_version=True), Reason.BAD_TYPE),
        (lambda m: m["samples"][1].update(success=1), Reason.BAD_TYPE),
        (lambda m: m["samples"][1].update(ids=[1, 2, 3]), Reason.BAD_TYPE),
        (lambda m: m.update(samples=["not a map"]), Reason.BAD_TYPE),
        (lambda m: m.update(prompt=[{"role": "user"}]), Reason.BAD_VALUE),
        (lambda m: m.update(run="other"), Reason.WRONG_RUN),
    ],
)
def test_each_malformed_case_has_its_reason(mutate, reason):
    m = _raw_map()
    mutate(m)
    assert _rejected(_pack(m), vocab_size=100, run="test").reason is reason


def test_oversize_is_rejected_before_parsing():
    raw = encode_group(make_group(g=8, n=1000))
    err = _rejected(raw, max_bytes=len(raw) - 1)
    assert err.reason is Reason.OVERSIZE
    assert decode_group(raw, max_bytes=len(raw)).size == 8


def test_garbage_and_non_map_payloads():
    assert _rejected(b"\xc1\xc1\xc1").reason is Reason.NOT_MSGPACK
    assert _rejected(_pack([1, 2, 3])).reason is Reason.BAD_TYPE
    assert _rejected("text").reason is Reason.BAD_TYPE
    with pytest.raises(RecordRejected) as info:
        decode_prompt(_pack({"v": 1, "prompt_id": "p", "task": "t", "answer": None}))
    assert info.value.reason is Reason.MISSING_FIELD


# ------------------------------------------------------------------ property-based

VALID = encode_group(make_group(g=2, n=3))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_the_typed_rejection(raw):
    for decode in (decode_group, decode_prompt):
        try:
            decode(raw)
        except RecordRejected as err:
            assert isinstance(err.reason, Reason)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutations_of_a_valid_record_raise_only_the_typed_rejection(data):
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[pos : pos + data.draw(st.integers(1, 16))]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        decode_group(bytes(raw), vocab_size=100)
    except RecordRejected as err:
        assert isinstance(err.reason, Reason)


_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(), st.text(max_size=5),
    st.binary(max_size=12),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_field_replacements_raise_only_the_typed_rejection(data):
    """Structurally valid msgpack with any one field (top or sample level) replaced."""
    m = _raw_map(make_group(g=2, n=3))
    target = data.draw(st.sampled_from(["top", "sample"]))
    holder = m if target == "top" else m["samples"][data.draw(st.integers(0, 1))]
    key = data.draw(st.sampled_from(sorted(holder)))
    holder[key] = data.draw(st.one_of(_leaves, st.lists(_leaves, max_size=3),
                                      st.dictionaries(st.text(max_size=3), _leaves, max_size=3)))
    try:
        decode_group(_pack(m), vocab_size=100)
    except RecordRejected as err:
        assert isinstance(err.reason, Reason)


LIMITS = GroupLimits(group_size=3, max_prompt_tokens=6, max_response_tokens=5)


def _with_sample(group, i: int = 0, **changes):
    samples = list(group.samples)
    samples[i] = dataclasses.replace(samples[i], **changes)
    return dataclasses.replace(group, samples=tuple(samples))


@pytest.mark.parametrize(("change", "reason", "detail"), [
    (lambda g: dataclasses.replace(g, samples=g.samples[:2]), Reason.GROUP_SIZE, "2 samples"),
    (lambda g: dataclasses.replace(g, samples=g.samples * 2), Reason.GROUP_SIZE, "6 samples"),
    (lambda g: dataclasses.replace(g, prompt_ids=np.zeros(0, np.int32)), Reason.TOO_LONG, "empty"),
    (lambda g: dataclasses.replace(g, prompt_ids=np.zeros(7, np.int32)), Reason.TOO_LONG, "prompt_ids: 7 > 6"),
    (lambda g: dataclasses.replace(g, prompt="x" * 1000), Reason.TOO_LONG, "group.prompt"),
    (lambda g: dataclasses.replace(g, answer="4" * 1000), Reason.TOO_LONG, "group.answer"),
    (lambda g: _with_sample(g, 1, ids=np.zeros(6, np.int32), logprobs=np.zeros(6, np.float32)),
     Reason.TOO_LONG, "samples[1].ids: 6 > 5"),
    (lambda g: _with_sample(g, 2, text="y" * 3000), Reason.TOO_LONG, "samples[2].text"),
    (lambda g: _with_sample(g, 0, reward=3e38), Reason.OUT_OF_RANGE, "reward"),
    (lambda g: _with_sample(g, 0, reward=float("nan")), Reason.NON_FINITE, "reward"),
    (lambda g: _with_sample(g, 1, logprobs=np.array([-1, -3e38, -1, -1, -1], np.float32)),
     Reason.OUT_OF_RANGE, "logprobs"),
    (lambda g: _with_sample(g, 0, revision=dataclasses.replace(g.samples[0].revision, ids=np.zeros(9, np.int32),
                                                                logprobs=np.zeros(9, np.float32))),
     Reason.TOO_LONG, "samples[0].revision.ids"),
])
def test_a_group_beyond_the_runs_limits_is_rejected_naming_the_part(change, reason, detail):
    """What the learner's ingestion does: decode (rewards and log-probs in range for any
    run), then the run's limits."""
    group = make_group(g=3, n=5)

    def ingest(g, limits=LIMITS):
        check_limits(decode_group(bytes(encode_group(g))), limits)

    ingest(group)  # the factory's group is within them
    with pytest.raises(RecordRejected) as err:
        ingest(change(group))
    assert err.value.reason is reason and detail in err.value.detail


def test_limits_left_unset_check_only_what_no_run_allows():
    group = _with_sample(make_group(g=9, n=50), 0, logprobs=np.full(50, LOGPROB_FLOOR + 1, np.float32))
    check_limits(decode_group(bytes(encode_group(group))), GroupLimits())
    with pytest.raises(RecordRejected, match="out_of_range"):
        decode_group(bytes(encode_group(_with_sample(group, 0, reward=-2e3))))
