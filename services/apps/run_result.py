"""What `hsd compare` keeps of one `hsd run`: its arm, pair, lr and held-out curve."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunResult:
    name: str
    arm: str
    method: str
    warm_start: int
    seed: int
    lr: float
    dir: str
    samples_before: int  # samples generated before this run (sdzero: its SRT phase's)
    samples_per_step: int
    accuracy_by_step: dict[int, float]
    accuracy_by_length: dict[int, float]  # at the last evaluation
    reference_logprob: float | None  # at the last evaluation
    wall_seconds: float
    samples: dict[str, int] = field(default_factory=dict)  # attempts, revisions

    @property
    def final(self) -> float:
        return self.accuracy_by_step[max(self.accuracy_by_step)]

    def accuracy_by_samples(self) -> dict[int, float]:
        return {self.samples_before + step * self.samples_per_step: a for step, a in self.accuracy_by_step.items()}
