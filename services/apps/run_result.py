"""What `hsd compare` keeps of one `hsd run`: its arm, pair, lr and held-out curve, and
what asynchrony did to it (its staleness bound η, throughput, ESS, drops, and a digest of
its final weights, by which two runs are compared bit for bit)."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
    max_staleness: int | None = None  # η
    samples_per_second: float | None = None  # generated samples over the run's wall time
    ess_fraction: float | None = None  # mean over steps of the IS weights' ESS / tokens
    dropped_fraction: float | None = None  # groups dropped (stale, …) over groups generated
    seconds_by_step: dict[int, float] = field(default_factory=dict)  # at each evaluation, since the first
    weights_sha256: str | None = None  # of the final checkpoint's weights
    peer_is_reference: float | None = None  # share of distilled samples whose in-group peer is the reference

    @property
    def final(self) -> float:
        return self.accuracy_by_step[max(self.accuracy_by_step)]

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> RunResult:
        """The inverse of ``json.loads(json.dumps(asdict(run)))``: JSON's string keys back to steps and k's."""
        ints = ("accuracy_by_step", "accuracy_by_length", "seconds_by_step")
        return cls(**{name: ({int(k): v for k, v in value.items()} if name in ints else value)
                      for name, value in record.items()})

    def accuracy_by_samples(self) -> dict[int, float]:
        return {self.samples_before + step * self.samples_per_step: a for step, a in self.accuracy_by_step.items()}


@dataclass
class SRTRun:
    """SD-Zero's phase 1 on one warm start (:func:`learner.srt_phase.srt_phase`)."""

    warm_start: int
    dir: str  # the SRT model, a Hugging Face folder: sdzero's student and teacher
    samples: dict[str, int]  # attempts, revisions: what sdzero's budget counts of the phase
    weights_sha256: str
    report: dict[str, Any]  # its srt.json: the dataset's sizes, the stages' losses

    @property
    def total_samples(self) -> int:
        return sum(self.samples.values())


def asynchrony(run_dir: str | Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The asynchrony fields of :class:`RunResult` from a run's summary, ``metrics.jsonl``
    and last checkpoint (what a run did not write stays None / empty)."""
    from learner import checkpoint as ckpt

    run_dir = Path(run_dir)
    groups = summary.get("groups", {})
    generated = groups.get("generated") or 0
    records = []
    if (run_dir / "metrics.jsonl").exists():
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    evals = [r for r in records if r.get("kind") == "eval"]
    ess = [r["ess_fraction"] for r in records if r.get("kind") == "step" and "ess_fraction" in r]
    last = ckpt.latest(run_dir / "checkpoints") if (run_dir / "checkpoints").exists() else None
    return {
        "samples_per_second": summary.get("throughput", {}).get("samples_per_second"),
        "ess_fraction": statistics.fmean(ess) if ess else None,
        "dropped_fraction": sum(groups.get("dropped", {}).values()) / generated if generated else None,
        "seconds_by_step": {r["step"]: round(r["time"] - evals[0]["time"], 2) for r in evals},
        "weights_sha256": ckpt.read_meta(last).files.get("model/model.safetensors") if last else None,
    }
