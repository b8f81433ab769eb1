"""The training methods a run can name, one entry each: the one list that
``algorithm.method``'s choices, ``hsd run --method``, ``hsd credit --method`` and ``hsd
compare`` read. Each entry names the module of :mod:`methods` that implements it (its
``Method`` subclass whose ``name`` is the entry's); :mod:`methods` imports them from here.

It lives in ``core`` and imports nothing, so that a config is checked, and the CLI builds
its choices, before anything heavy (torch, the methods) is imported.

Adding a method: its module in ``methods/`` and one entry in :data:`METHOD_REGISTRY`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MethodEntry:
    module: str  # under methods/, holding the Method subclass of this name
    summary: str
    # what the teacher reads besides the prompt, as ``hsd credit`` is given it (--peer, --answer,
    # --reward); None: the method has no teacher view of its own
    teacher_reads: Literal["peer", "answer", "reward"] | None = None
    starts_from_srt: bool = False  # its student and teacher start from SD-Zero's phase 1 model
    is_arm: bool = True  # `hsd compare` can run it as an arm (srt is a phase before the arms)


METHOD_REGISTRY: dict[str, MethodEntry] = {
    "grpo": MethodEntry("methods.grpo", "the baseline: one outcome advantage per rollout, no teacher"),
    "hsd": MethodEntry("methods.hsd", "Hindsight Self-Distillation: the teacher reads a successful in-group peer",
                       teacher_reads="peer"),
    "opsd": MethodEntry("methods.opsd", "the teacher reads the reference answer", teacher_reads="answer"),
    "sdzero": MethodEntry("methods.sdzero", "SD-Zero: the model as its own reviser, given its attempt and the reward",
                          teacher_reads="reward", starts_from_srt=True),
    "srt": MethodEntry("methods.srt", "SD-Zero's phase 1: supervised self-revision training", is_arm=False),
    "rft": MethodEntry("methods.rft", "rejection-sampling fine-tuning on the model's own successes"),
}

MethodName = Literal[tuple(METHOD_REGISTRY)]  # type: ignore[valid-type]  # the config field's choices
