"""msgpack codec for the wire records, with validation on decode.

Arrays travel as raw little-endian bytes (int32 ids, float32 log-probs) and are decoded
with ``np.frombuffer`` (no per-element work). Decoding never trusts its input: anything
malformed raises :class:`RecordRejected` with a :class:`Reason`, and nothing else —
callers dead-letter on that one exception type and keep running.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from core.records import (
    FINISH_REASONS,
    SCHEMA_VERSION,
    PromptItem,
    Revision,
    RolloutGroup,
    Sample,
)

IDS_DTYPE = np.dtype("<i4")
LOGPROB_DTYPE = np.dtype("<f4")
DEFAULT_MAX_BYTES = 64 << 20
# A log-prob is <= 0; engines report float noise just above it.
LOGPROB_SLACK = 1e-3
# A sampled token's log-prob: float32 probabilities end near e^-104, so anything far below
# was not sampled. Rewards: verifiers score in [0, 1]; shaped rewards stay far inside this.
LOGPROB_FLOOR = -1e3
REWARD_LIMIT = 1e3
# characters a token may stand for on average (texts are bounded by their token limits)
CHARS_PER_TOKEN = 32


class Reason(enum.StrEnum):
    OVERSIZE = "oversize"
    NOT_MSGPACK = "not_msgpack"
    WRONG_VERSION = "wrong_version"
    MISSING_FIELD = "missing_field"
    BAD_TYPE = "bad_type"
    BAD_VALUE = "bad_value"
    LENGTH_MISMATCH = "length_mismatch"
    NON_FINITE = "non_finite"
    TOKEN_OUT_OF_RANGE = "token_out_of_range"
    WRONG_RUN = "wrong_run"
    # well-typed, but not what this run's actors produce (check_limits)
    GROUP_SIZE = "group_size"
    TOO_LONG = "too_long"
    OUT_OF_RANGE = "out_of_range"
    # decoded and within limits, yet no training sample can be made of it (the learner)
    UNUSABLE = "unusable"


class RecordRejected(ValueError):
    """A record failed validation. ``reason`` is the typed cause, ``detail`` says where."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- encode


def _array_bytes(arr: np.ndarray, dtype: np.dtype) -> memoryview:
    """A view of the array's bytes in the wire dtype (copied only if it is not one already);
    msgpack packs it as bin without an intermediate bytes object."""
    return memoryview(np.ascontiguousarray(arr, dtype=dtype)).cast("B")


def _revision_map(r: Revision) -> dict[str, Any]:
    return {
        "ids": _array_bytes(r.ids, IDS_DTYPE),
        "logprobs": _array_bytes(r.logprobs, LOGPROB_DTYPE),
        "reward": float(r.reward),
        "success": bool(r.success),
        "text": r.text,
    }


def _sample_map(s: Sample) -> dict[str, Any]:
    out = {
        "ids": _array_bytes(s.ids, IDS_DTYPE),
        "logprobs": _array_bytes(s.logprobs, LOGPROB_DTYPE),
        "reward": float(s.reward),
        "success": bool(s.success),
        "finish": s.finish,
        "text": s.text,
    }
    if s.revision is not None:
        out["revision"] = _revision_map(s.revision)
    return out


def _pack(obj: dict[str, Any], size_hint: int = 0) -> memoryview:
    """msgpack bytes as a view of the packer's own buffer: no final copy into a bytes
    object (redis-py sends a memoryview as is). The view keeps its packer alive."""
    packer = msgpack.Packer(use_bin_type=True, autoreset=False, buf_size=max(size_hint, 4096))
    packer.pack(obj)
    return packer.getbuffer()


def _payload_bytes(group: RolloutGroup) -> int:
    arrays = sum(s.ids.size + s.logprobs.size for s in group.samples)
    return 4 * (arrays + group.prompt_ids.size) + sum(len(s.text) for s in group.samples) + 4096


def encode_group(group: RolloutGroup) -> memoryview:
    """The group as msgpack (a bytes-like view; ``bytes()`` it to keep a copy)."""
    return _pack(
        {
            "v": group.v,
            "run": group.run,
            "group_id": group.group_id,
            "prompt_id": group.prompt_id,
            "task": group.task,
            "actor": group.actor,
            "created": float(group.created),
            "policy_version": int(group.policy_version),
            "prompt": group.prompt,
            "prompt_ids": _array_bytes(group.prompt_ids, IDS_DTYPE),
            "answer": group.answer,
            "samples": [_sample_map(s) for s in group.samples],
        },
        _payload_bytes(group),
    )


def encode_prompt(item: PromptItem) -> bytes:
    return msgpack.packb(
        {
            "v": item.v,
            "prompt_id": item.prompt_id,
            "task": item.task,
            "prompt": item.prompt,
            "answer": item.answer,
            "admitted_at_version": int(item.admitted_at_version),
            "sampling_seed": item.sampling_seed,
        },
        use_bin_type=True,
    )


# --------------------------------------------------------------------------- decode


class _Reader:
    """Typed field access on an untrusted map; every failure is a RecordRejected."""

    def __init__(self, m: Any, where: str) -> None:
        if not isinstance(m, Mapping):
            raise RecordRejected(Reason.BAD_TYPE, f"{where}: expected a map, got {type(m).__name__}")
        self.m = m
        self.where = where

    def _get(self, key: str, types: tuple[type, ...], nullable: bool = False) -> Any:
        if key not in self.m:
            raise RecordRejected(Reason.MISSING_FIELD, f"{self.where}.{key}")
        value = self.m[key]
        if value is None and nullable:
            return None
        # bool is an int subclass: an int field must not accept True, nor a bool field 1.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = "/".join(t.__name__ for t in types)
            raise RecordRejected(
                Reason.BAD_TYPE, f"{self.where}.{key}: expected {names}, got {type(value).__name__}"
            )
        return value

    def str(self, key: str, nullable: bool = False) -> Any:
        return self._get(key, (str,), nullable)

    def int(self, key: str) -> int:
        return self._get(key, (int,))

    def optional_int(self, key: str) -> int | None:
        """A field a producer may leave out (an older one) or set to nil."""
        return self._get(key, (int,), nullable=True) if key in self.m else None

    def float(self, key: str) -> float:
        value = float(self._get(key, (int, float)))
        if not math.isfinite(value):
            raise RecordRejected(Reason.NON_FINITE, f"{self.where}.{key} = {value}")
        return value

    def bool(self, key: str) -> bool:
        return self._get(key, (bool,))

    def array(self, key: str, dtype: np.dtype) -> np.ndarray:
        raw = self._get(key, (bytes,))
        if len(raw) % dtype.itemsize:
            raise RecordRejected(
                Reason.LENGTH_MISMATCH,
                f"{self.where}.{key}: {len(raw)} bytes is not a whole number of {dtype} values",
            )
        return np.frombuffer(raw, dtype=dtype)

    def version(self) -> None:
        v = self.int("v")
        if v != SCHEMA_VERSION:
            raise RecordRejected(
                Reason.WRONG_VERSION, f"{self.where}.v = {v}, this build reads {SCHEMA_VERSION}"
            )


def _unpack(raw: Any, max_bytes: int) -> Any:
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise RecordRejected(Reason.BAD_TYPE, f"payload is {type(raw).__name__}, not bytes")
    if len(raw) > max_bytes:
        raise RecordRejected(Reason.OVERSIZE, f"{len(raw)} bytes > limit {max_bytes}")
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as err:  # msgpack raises many unrelated types for garbage
        raise RecordRejected(Reason.NOT_MSGPACK, f"{type(err).__name__}: {err}") from None


def _tokens(r: _Reader, key: str, vocab_size: int | None) -> np.ndarray:
    ids = r.array(key, IDS_DTYPE)
    if ids.size:
        # One reduction catches both ends: a negative int32 viewed as uint32 is >= 2**31.
        bound = vocab_size if vocab_size is not None else 2**31
        if int(ids.view("<u4").max()) >= bound:
            raise RecordRejected(
                Reason.TOKEN_OUT_OF_RANGE,
                f"{r.where}.{key}: ids in [{int(ids.min())}, {int(ids.max())}], "
                f"vocabulary {vocab_size}",
            )
    return ids


def _completion(r: _Reader, vocab_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """ids and log-probs of one generated sequence, with their joint checks."""
    ids = _tokens(r, "ids", vocab_size)
    logprobs = r.array("logprobs", LOGPROB_DTYPE)
    if logprobs.shape != ids.shape:
        raise RecordRejected(
            Reason.LENGTH_MISMATCH, f"{r.where}: {ids.size} ids but {logprobs.size} logprobs"
        )
    if logprobs.size:
        # NaN propagates through min and max; -inf shows in min, +inf in max.
        low, high = float(logprobs.min()), float(logprobs.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            raise RecordRejected(Reason.NON_FINITE, f"{r.where}.logprobs has NaN or inf")
        if high > LOGPROB_SLACK:
            raise RecordRejected(
                Reason.BAD_VALUE, f"{r.where}.logprobs has a positive log-prob {high}"
            )
        if low < LOGPROB_FLOOR:
            raise RecordRejected(Reason.OUT_OF_RANGE, f"{r.where}.logprobs min {low:g} < {LOGPROB_FLOOR:g}")
    return ids, logprobs


def _reward(r: _Reader) -> float:
    reward = r.float("reward")
    if not -REWARD_LIMIT <= reward <= REWARD_LIMIT:  # also NaN
        raise RecordRejected(Reason.OUT_OF_RANGE, f"{r.where}.reward = {reward}, limit ±{REWARD_LIMIT:g}")
    return reward


def _decode_revision(m: Any, where: str, vocab_size: int | None) -> Revision:
    r = _Reader(m, where)
    ids, logprobs = _completion(r, vocab_size)
    return Revision(ids, logprobs, _reward(r), r.bool("success"), r.str("text"))


def _decode_sample(m: Any, where: str, vocab_size: int | None) -> Sample:
    r = _Reader(m, where)
    ids, logprobs = _completion(r, vocab_size)
    finish = r.str("finish")
    if finish not in FINISH_REASONS:
        raise RecordRejected(Reason.BAD_VALUE, f"{where}.finish = {finish!r}")
    rev = r.m.get("revision")
    revision = None if rev is None else _decode_revision(rev, f"{where}.revision", vocab_size)
    return Sample(
        ids, logprobs, _reward(r), r.bool("success"), finish, r.str("text"), revision
    )


def decode_group(
    raw: bytes,
    *,
    vocab_size: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    run: str | None = None,
) -> RolloutGroup:
    """Decode and validate one rollout group; raises only :class:`RecordRejected`."""
    r = _Reader(_unpack(raw, max_bytes), "group")
    r.version()
    record_run = r.str("run")
    if run is not None and record_run != run:
        raise RecordRejected(Reason.WRONG_RUN, f"group.run = {record_run!r}, expected {run!r}")
    policy_version = r.int("policy_version")
    if policy_version < 0:
        raise RecordRejected(Reason.BAD_VALUE, f"group.policy_version = {policy_version}")
    raw_samples = r._get("samples", (list,))
    if not raw_samples:
        raise RecordRejected(Reason.BAD_VALUE, "group.samples is empty")
    samples = tuple(
        _decode_sample(m, f"group.samples[{i}]", vocab_size) for i, m in enumerate(raw_samples)
    )
    return RolloutGroup(
        run=record_run,
        group_id=r.str("group_id"),
        prompt_id=r.str("prompt_id"),
        task=r.str("task"),
        actor=r.str("actor"),
        created=r.float("created"),
        policy_version=policy_version,
        prompt=_decode_messages(r, "prompt"),
        prompt_ids=_tokens(r, "prompt_ids", vocab_size),
        answer=r.str("answer", nullable=True),
        samples=samples,
        v=SCHEMA_VERSION,
    )


@dataclass(frozen=True)
class GroupLimits:
    """What a group of this run can hold, beyond being well-typed: the actors sample G
    completions of at most ``max_response_tokens`` for prompts of at most
    ``max_prompt_tokens``. None: not checked."""

    group_size: int | None = None
    max_prompt_tokens: int | None = None
    max_response_tokens: int | None = None


def check_limits(group: RolloutGroup, limits: GroupLimits) -> None:
    """Raise :class:`RecordRejected` (group_size, too_long) for a decoded group that no
    actor of this run would write; the learner's sample building and loss may assume what
    this and the decoder (rewards and log-probs in range) check."""
    n = len(group.samples)
    if limits.group_size is not None and n != limits.group_size:
        raise RecordRejected(Reason.GROUP_SIZE, f"group has {n} samples, the run samples {limits.group_size}")
    if group.prompt_ids.size == 0:
        raise RecordRejected(Reason.TOO_LONG, "group.prompt_ids is empty: a response needs a context")
    prompt_chars = len(group.prompt) if isinstance(group.prompt, str) else \
        sum(len(m["content"]) for m in group.prompt)
    _at_most("group.prompt_ids", group.prompt_ids.size, limits.max_prompt_tokens)
    _at_most("group.prompt (characters)", prompt_chars, _chars(limits.max_prompt_tokens))
    _at_most("group.answer (characters)", len(group.answer or ""), _chars(limits.max_response_tokens))
    for i, s in enumerate(group.samples):
        for where, part in ((f"group.samples[{i}]", s), (f"group.samples[{i}].revision", s.revision)):
            if part is None:
                continue
            _at_most(f"{where}.ids", part.ids.size, limits.max_response_tokens)
            _at_most(f"{where}.text (characters)", len(part.text), _chars(limits.max_response_tokens))


def _chars(tokens: int | None) -> int | None:
    return None if tokens is None else tokens * CHARS_PER_TOKEN


def _at_most(where: str, size: int, limit: int | None) -> None:
    if limit is not None and size > limit:
        raise RecordRejected(Reason.TOO_LONG, f"{where}: {size} > {limit}")


def _decode_messages(r: _Reader, key: str) -> str | list[dict[str, str]]:
    if key not in r.m:
        raise RecordRejected(Reason.MISSING_FIELD, f"{r.where}.{key}")
    value = r.m[key]
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        for i, msg in enumerate(value):
            if not (
                isinstance(msg, Mapping)
                and isinstance(msg.get("role"), str)
                and isinstance(msg.get("content"), str)
            ):
                raise RecordRejected(
                    Reason.BAD_VALUE, f"{r.where}.{key}[{i}] is not a {{role, content}} message"
                )
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise RecordRejected(
        Reason.BAD_TYPE, f"{r.where}.{key} must be text or a non-empty message list"
    )


def decode_prompt(raw: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> PromptItem:
    """Decode and validate one prompt work item; raises only :class:`RecordRejected`."""
    r = _Reader(_unpack(raw, max_bytes), "prompt")
    r.version()
    return PromptItem(
        prompt_id=r.str("prompt_id"),
        task=r.str("task"),
        prompt=_decode_messages(r, "prompt"),
        answer=r.str("answer", nullable=True),
        admitted_at_version=r.int("admitted_at_version"),
        sampling_seed=r.optional_int("sampling_seed"),
        v=SCHEMA_VERSION,
    )
