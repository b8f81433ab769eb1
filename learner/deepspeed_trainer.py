"""The DeepSpeed training engine: the torch step (learner.trainer) data-parallel over the
processes of a ``torchrun``, with ZeRO-2 or ZeRO-3 partitioning from ``[learner]
zero_stage``. It runs on CPU with gloo and on GPUs with NCCL, unchanged.

Rank 0 is the learner service (Redis, the weight service, checkpoints, metrics); every
other rank only follows it. Each collective method below is called by rank 0, which first
broadcasts the call, and by the followers from :meth:`DeepSpeedTrainer.follow`::

    rank 0 (Learner)                         ranks 1..N-1 (follow)
    trainer.set_lr(lr)           ──bcast──▶  set_lr(lr)              the schedule's lr
    trainer.train_step(samples)  ──bcast──▶  train_step(samples)     same batch, own shard
    trainer.full_state_dict()    ──bcast──▶  full_state_dict()       ZeRO-3: gathered to rank 0
    trainer.save_state(dir)      ──bcast──▶  save_state(dir)         each writes its partition
    trainer.load_state(dir)      ──bcast──▶  load_state(dir)
    trainer.close()              ──bcast──▶  (follow returns)

In a step every rank takes every world-th sample of the batch sorted by length, scores
and trains its share in micro-batches, and the gradients are reduced across ranks. The
loss keeps the *global* normalisation (token/sequence counts of the whole batch) and is
multiplied by the world size, because DeepSpeed averages gradients over ranks: the sum of
the per-rank gradients is then exactly the single-process gradient. ZeRO's gradient
reduction (and, for ZeRO-3, the parameter gathers of every forward) are collectives, so
all ranks run the same number of passes: a rank with fewer micro-batches runs an idle
pass (a two-token forward whose loss is multiplied by zero) in place of each one it lacks.

Gradient accumulation is unmanaged (DeepSpeed's ``managed_gradient_accumulation =
false``): any number of backward passes, then one ``engine.step()`` — the number of
micro-batches varies from step to step with the lengths of the batch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from core.config import Config
from core.views import ScoringInput
from learner.batch import microbatches
from learner.logprobs import dense_response_logits
from learner.teacher import CurrentTeacher, TeacherPolicy
from learner.trainer import TorchTrainer
from methods.base import TrainingSample

CHECKPOINT_TAG = "state"


def init_process_group() -> None:
    """Join the ``torchrun`` job this process was started by (gloo on CPU, NCCL on GPUs);
    started without torchrun, it is a job of one."""
    import deepspeed

    if "RANK" not in os.environ:
        from services.net import free_port

        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(free_port())})

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


def is_follower() -> bool:
    """A rank other than 0 of a multi-process job."""
    return int(os.environ.get("RANK", "0")) > 0


def deepspeed_config(config: Config, on_gpu: bool) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": 1,  # the step makes its own micro-batches
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": config.learner.grad_clip,
        "zero_optimization": {"stage": config.learner.zero_stage},
        "zero_allow_untested_optimizer": True,  # torch's AdamW, the torch engine's optimiser
        "bf16": {"enabled": on_gpu and config.model.dtype in ("auto", "bfloat16")},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


class DeepSpeedTrainer(TorchTrainer):
    uses_master_weights = False  # DeepSpeed's bf16 mode keeps its own float32 partitions
    fused_optimizer = False  # ZeRO steps torch's AdamW on its flat partitions

    def __init__(self, model: torch.nn.Module, config: Config, pad_id: int,
                 teacher: TeacherPolicy | None = None) -> None:
        import deepspeed

        # The teacher copy and torch's AdamW are made on the whole module, before ZeRO
        # partitions it.
        super().__init__(model, config, pad_id, teacher)
        self.stage = config.learner.zero_stage
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=self.optimizer, config=deepspeed_config(config, self.device.type == "cuda"))
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        # ZeRO-3 gathers parameters in every forward of the student module, so the
        # `current` teacher's forward is a collective too; a copied teacher is local.
        self.teacher_in_step = self.stage == 3 and isinstance(self.teacher, CurrentTeacher)
        # ...and then every rank must make the same number of teacher forward calls: one
        # per teacher pass (teacher_plan pads the passes to the most any rank has), which
        # sharing contexts (one or two calls, by the data) would break.
        self.share_contexts = not self.teacher_in_step
        # ZeRO-3 partitions the output embedding: only the model's own forward gathers it
        self.head_route = self.head_route and self.stage != 3

    # ------------------------------------------------------------------ rank 0 leads

    def _lead(self, name: str, *args: Any) -> None:
        if self.rank == 0:
            dist.broadcast_object_list([(name, args)], src=0)

    def follow(self) -> None:
        """Ranks > 0: run the calls rank 0 broadcasts, in its order, until it closes."""
        while True:
            box: list[Any] = [None]
            dist.broadcast_object_list(box, src=0)
            name, args = box[0]
            if name == "close":
                return
            getattr(self, name)(*args)

    def set_lr(self, lr: float) -> None:
        self._lead("set_lr", lr)
        super().set_lr(lr)

    def train_step(self, samples: Sequence[TrainingSample]):
        self._lead("train_step", list(samples))
        return super().train_step(samples)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Whole weights on rank 0 (ZeRO-3 gathers them layer by layer); ``{}`` elsewhere."""
        self._lead("full_state_dict")
        if self.stage == 3:
            return self.engine._zero3_consolidated_16bit_state_dict() or {}
        return self.model.state_dict() if self.rank == 0 else {}

    def save_state(self, directory: Path) -> None:
        self._lead("save_state", directory)
        self.engine.save_checkpoint(str(directory / "deepspeed"), tag=CHECKPOINT_TAG, save_latest=False)
        if self.rank == 0:
            torch.save(self.policy_states(), directory / "teacher.pt")
        dist.barrier()  # every partition is on disk before rank 0 renames the checkpoint into place

    def load_state(self, directory: Path) -> None:
        self._lead("load_state", directory)
        self.engine.load_checkpoint(str(directory / "deepspeed"), tag=CHECKPOINT_TAG,
                                    load_optimizer_states=True, load_lr_scheduler_states=False)
        self.load_policy_states(torch.load(directory / "teacher.pt", weights_only=True))

    def close(self) -> None:
        self._lead("close")

    # ------------------------------------------------------------------ step hooks

    @property
    def student(self) -> torch.nn.Module:
        return self.engine

    def plan(self, samples: Sequence[TrainingSample]) -> list[list[int]]:
        by_length = sorted(range(len(samples)), key=lambda k: samples[k].length)
        mine = by_length[self.rank::self.world]
        local = microbatches([samples[k] for k in mine], self.config.learner.microbatch_tokens)
        groups = [[mine[i] for i in mb] for mb in local]
        count = torch.tensor([len(groups)], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return groups + [[] for _ in range(int(count) - len(groups))]

    def teacher_plan(self, samples: Sequence[TrainingSample], mine: Sequence[int]) -> list[list[int]]:
        plan = super().teacher_plan(samples, mine)
        if not self.teacher_in_step:
            return plan
        count = torch.tensor([len(plan)], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return plan + [[] for _ in range(int(count) - len(plan))]

    def _tiny_input(self, sample: TrainingSample) -> list[ScoringInput]:
        return [ScoringInput(sample.student.ids[:2], 1, 1)]

    def idle_pass(self, sample: TrainingSample) -> None:
        logits, _, _ = dense_response_logits(self.student, self._tiny_input(sample), self.pad_id)
        self.backward(logits.sum() * 0.0)

    @torch.no_grad()
    def idle_teacher_pass(self, sample: TrainingSample) -> None:
        if self.teacher_in_step:
            dense_response_logits(self.teacher.module(self.model), self._tiny_input(sample), self.pad_id)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss * self.world, scale_wrt_gas=False)

    def optimizer_step(self) -> float:
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else 0.0

    def after_step(self) -> None:
        with self._whole_weights():
            self.teacher.after_step(self.model)

    def _whole_weights(self):
        if self.stage != 3 or isinstance(self.teacher, CurrentTeacher):
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None)

    def merge(self, credit, is_stats, totals):
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, (credit, is_stats, totals))
        merged_credit = {k: v for c, _, _ in parts for k, v in c.items()}
        merged_stats = [s for _, st, _ in parts for s in st]
        return merged_credit, merged_stats, {"loss": sum(t["loss"] for _, _, t in parts)}
