"""Which GPUs each process of ``hsd run`` sees, and how much of a shared one vLLM may take.

Left alone, every process would open cuda:0: the learner and all actors on one GPU, and
with vLLM's default 0.9 memory share the second process could not start. The plan:

- ``run.learner_devices`` / ``run.actor_devices`` name the devices (ids as
  CUDA_VISIBLE_DEVICES writes them) where set; actors go round-robin over theirs;
- otherwise, with more GPUs than learner ranks, the learner takes the first
  ``learner.processes`` and the actors go round-robin over the rest;
- with no more GPUs than learner ranks, everything shares them: the learner its ranks'
  GPUs, the actors round-robin over all.

A vLLM actor's memory share is ``actor.vllm_gpu_memory_utilization`` split among the
vLLM actors on its GPU; where the learner is on that GPU too, they split only
``1 − run.learner_gpu_share`` of it (never more than the configured share).
Each process gets ``CUDA_VISIBLE_DEVICES``; a learner under torchrun gives rank r the r-th
of its devices (LOCAL_RANK). No GPU visible: nothing is set and every process runs on CPU.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class DevicePlan:
    learner: tuple[str, ...]  # the learner's devices (one a rank)
    actors: tuple[tuple[str, ...], ...]  # each actor's device (one; empty on CPU)
    vllm_memory: tuple[float | None, ...]  # each actor's vLLM memory share (None: not vLLM, or CPU)

    def env(self, role: str, index: int = 0) -> dict[str, str]:
        """CUDA_VISIBLE_DEVICES of one process; nothing on a machine without GPUs."""
        devices = self.learner if role == "learner" else self.actors[index]
        return {"CUDA_VISIBLE_DEVICES": ",".join(devices)} if devices else {}

    def describe(self) -> str:
        if not self.learner and not any(self.actors):
            return "no GPU: every process on CPU"
        actors = ", ".join(f"actor-{i} {','.join(d)}" + (f" (vLLM {m:.2f})" if m is not None else "")
                           for i, (d, m) in enumerate(zip(self.actors, self.vllm_memory, strict=True)))
        return f"GPUs: learner {','.join(self.learner)}; {actors}"


def visible_gpus() -> list[str]:
    """The GPU ids this machine shows (CUDA_VISIBLE_DEVICES where set), by the driver's count."""
    import torch

    count = torch.cuda.device_count()
    listed = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def plan_devices(gpus: list[str], actors: int, *, learner_processes: int = 1, vllm: bool = False,
                 vllm_memory: float = 0.9, learner_share: float = 0.5, learner_devices: list[str] | None = None,
                 actor_devices: list[str] | None = None) -> DevicePlan:
    """The placement the module docstring describes (pure: the tests drive it with device lists)."""
    if not gpus and not learner_devices and not actor_devices:
        return DevicePlan((), tuple(() for _ in range(actors)), tuple(None for _ in range(actors)))
    learner = list(learner_devices) if learner_devices else gpus[:learner_processes]
    if actor_devices:
        pool = list(actor_devices)
    elif learner_devices:
        pool = [g for g in gpus if g not in learner] or gpus or learner
    else:
        pool = gpus[learner_processes:] if len(gpus) > learner_processes else gpus
    if len(learner) != learner_processes:
        raise ValueError(f"run.learner_devices: {len(learner)} device(s) for learner.processes = "
                         f"{learner_processes} (one a rank)")
    assigned = [pool[i % len(pool)] for i in range(actors)]
    per_gpu = Counter(assigned)
    shares: list[float | None] = []
    for device in assigned:
        if not vllm:
            shares.append(None)
            continue
        room = min(vllm_memory, 1.0 - learner_share) if device in learner else vllm_memory
        shares.append(round(room / per_gpu[device], 4))
    return DevicePlan(tuple(learner), tuple((d,) for d in assigned), tuple(shares))
