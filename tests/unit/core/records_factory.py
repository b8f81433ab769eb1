"""Valid records to start tests (and mutations) from."""

from __future__ import annotations

import itertools

import numpy as np

from core.records import PromptItem, Revision, RolloutGroup, Sample


def make_sample(n: int = 5, *, seed: int = 0, success: bool = True, revision: bool = False) -> Sample:
    rng = np.random.default_rng(seed)
    rev = None
    if revision:
        rev = Revision(
            ids=rng.integers(0, 100, 3).astype(np.int32),
            logprobs=-rng.random(3).astype(np.float32),
            reward=1.0,
            success=True,
            text="fix",
        )
    return Sample(
        ids=rng.integers(0, 100, n).astype(np.int32),
        logprobs=-rng.random(n).astype(np.float32),
        reward=1.0 if success else 0.0,
        success=success,
        finish="stop",
        text="x" * n,
        revision=rev,
    )


_GROUP_IDS = itertools.count()


def make_group(g: int = 3, n: int = 5, **overrides) -> RolloutGroup:
    fields = dict(
        run="test",
        group_id=f"g{next(_GROUP_IDS)}",  # unique, as actors make them (the replay drops repeats)
        prompt_id="p-1",
        task="arith",
        actor="actor-0",
        created=1_700_000_000.5,
        policy_version=7,
        prompt=[{"role": "user", "content": "2+2?"}],
        prompt_ids=np.arange(6, dtype=np.int32),
        answer="4",
        samples=tuple(make_sample(n, seed=i, success=i % 2 == 0, revision=i == 0) for i in range(g)),
    )
    fields.update(overrides)
    return RolloutGroup(**fields)


def make_prompt(**overrides) -> PromptItem:
    fields = dict(
        prompt_id="p-1", task="arith", prompt="What is 2+2?", answer="4", admitted_at_version=3
    )
    fields.update(overrides)
    return PromptItem(**fields)
