"""Wire records: what travels through Redis between actors and the learner.

Token ids and log-probs are numpy arrays on this side and raw little-endian bytes on the
wire (int32 ids, float32 log-probs); :mod:`core.codec` converts and validates.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

SCHEMA_VERSION = 1
FINISH_REASONS = ("stop", "length")
Finish = Literal["stop", "length"]
ChatMessage = dict[str, str]  # {"role": ..., "content": ...}


@dataclass(frozen=True, eq=False)
class Revision:
    """SD-Zero phase 1 (`srt`): the reviser's continuation of a sample."""

    ids: np.ndarray  # int32 [n]: the reviser's generated tokens
    logprobs: np.ndarray  # float32 [n]: behaviour log-probs μ(y_t) (nats) of those tokens
    reward: float  # verifier score of the revision
    success: bool  # the verifier accepted the revision
    text: str  # decoded revision, for logs and verifiers


@dataclass(frozen=True, eq=False)
class Sample:
    """One of the G responses to a prompt."""

    ids: np.ndarray  # int32 [n]: generated token ids y, without the prompt
    logprobs: np.ndarray  # float32 [n]: behaviour log-probs μ(y_t) (nats), as sampled
    reward: float  # verifier score (binary tasks: 0.0 or 1.0)
    success: bool  # the verifier accepted the response
    finish: Finish  # "stop": ended on a stop token; "length": hit max_response_tokens
    text: str  # decoded response
    revision: Revision | None = None  # only for method `srt`


@dataclass(frozen=True, eq=False)
class RolloutGroup:
    """G samples of one prompt, generated under a single policy version; one stream entry."""

    run: str  # run name; a record for another run is rejected
    group_id: str  # hex, unique per group
    prompt_id: str  # stable id of the prompt (peer bank key)
    task: str  # task name, selects the verifier
    actor: str  # id of the actor that generated it
    created: float  # unix seconds when the group was written
    policy_version: int  # the version v_b of the weights that sampled every sample
    prompt: str | list[ChatMessage]  # the prompt as admitted (teacher contexts re-render it)
    prompt_ids: np.ndarray  # int32 [m]: the student prompt, chat template applied
    answer: str | None  # reference answer, when the task has one
    samples: tuple[Sample, ...]  # G >= 1 samples
    v: int = SCHEMA_VERSION  # wire schema version

    @property
    def size(self) -> int:
        return len(self.samples)

    @functools.cached_property
    def content_key(self) -> str:
        """A digest of what the group is (its prompt, version and sampled tokens), never of
        who made it or when: the learner's order within a batch and its seeded draws (a
        peer, a placebo) follow from it, so that the same groups make the same step whatever
        order the actors delivered them in."""
        digest = hashlib.blake2b(f"{self.prompt_id}\0{self.policy_version}".encode(), digest_size=16)
        for s in self.samples:
            digest.update(s.ids.tobytes())
            digest.update(b"\0")
        return digest.hexdigest()


@dataclass(frozen=True)
class PromptItem:
    """A unit of work on the prompt stream: sample this prompt G times."""

    prompt_id: str  # stable id of the prompt
    task: str  # task name
    prompt: str | list[ChatMessage] = field(hash=False)  # text or chat messages
    answer: str | None  # reference answer (for verifiers and the OPSD/HSD teacher)
    admitted_at_version: int  # learner version when the prompt was admitted
    # the seed its G samples are drawn with (the learner derives it from run.seed and the
    # prompt's place in the stream), so that a synchronous run is reproducible; None: unseeded
    sampling_seed: int | None = None
    v: int = SCHEMA_VERSION  # wire schema version
