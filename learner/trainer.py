"""The torch training engine: one optimiser update per replay batch.

Per step, then per micro-batch (grouped to a token budget) for each of ``epochs`` passes:

1. teacher passes (no grad, once per step, batched by teacher view: learner.batch.teacher_batches):
   log π_T(y_t | c, y_<t) at y's positions of the teacher view, and the teacher's top-k
   logits there where the method's loss reads them (``Method.teacher_topk``); a context c
   that several samples share (HSD's prompt + peer, OPSD's prompt + answer) is run once
   and its KV cache reused (learner.logprobs.shared_prefix_hidden);
2. student pass (grad): log π_θ(y_t | x, y_<t); in the first epoch these, detached, are
   π_θold — no separate forward;
3. IS weights w_t from π_θold/μ (learner.staleness), then the method's loss
   (methods.base.Method.loss: A_t = A_i + λ·δ_t with δ_t = log π_T − log π_θold for
   ``sampled``, or A_i plus λ × the top-k mixed KL for ``topk``; srt: supervised);
4. loss normalised over the *global* batch (token count / sequence count of all
   micro-batches), backward (gradients accumulate).

Then gradient clipping, the optimiser step and the teacher policy's update. Logits are
divided by the actors' sampling temperature so that π_θold is comparable with μ.

Steps 1–3 run on the head route of learner.logprobs: the backbone's hidden states at the
response positions, and vocabulary-wide logits for ``learner.head_chunk_tokens`` positions
at a time, the loss's gradient taken chunk by chunk. The dense route (whole logits from the
model's forward) serves models whose logits are not h·Wᵀ, and DeepSpeed ZeRO-3.

Precision (``model.dtype``, ``learner.master_weights``): float32 parameters train under
bf16 autocast on CUDA; bf16/fp16 parameters train with float32 master weights and AdamW
states (learner.precision), or, without master weights, in their own dtype.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.config import Config
from core.views import ScoringInput
from learner.batch import microbatches, teacher_batches
from learner.logprobs import (
    dense_response_logits,
    head_loss,
    head_scores,
    logits_are_linear_in_hidden,
    packed_response_hidden,
    response_hidden,
    shared_prefix_hidden,
    split_causal_lm,
    token_entropy,
    token_logprobs,
)
from learner.lora import adapter_state_dict, load_adapters, merged_state_dict
from learner.precision import MasterWeights
from learner.staleness import importance_weights, prefix_weights
from learner.teacher import FrozenTeacher, TeacherPolicy, make_teacher_policy
from methods import make_method
from methods.base import LossTerms, TrainingSample
from methods.credit import token_credit

log = logging.getLogger(__name__)
PROBE_IDS = (1, 2, 3, 4)  # any ids below the vocabulary size


@dataclass
class StepResult:
    metrics: dict[str, float]
    credit: dict[int, torch.Tensor] = field(default_factory=dict)  # sample index -> δ [n]
    seconds: float = 0.0
    tokens: int = 0


def _pad_rows(rows: Sequence[torch.Tensor], width: int, value: float = 0.0) -> torch.Tensor:
    out = torch.full((len(rows), width), value)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r
    return out


def _pad_topk(rows: Sequence[torch.Tensor | None], width: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, width, k]: each row's [n, k] tensor, zeros elsewhere (finite: masked, never NaN)."""
    out = torch.zeros((len(rows), width, k), dtype=dtype)
    for i, r in enumerate(rows):
        if r is not None:
            out[i, : r.shape[0]] = r
    return out


def load_reference(config: Config, student: torch.nn.Module) -> torch.nn.Module:
    """``algorithm.kl_reference``'s model, on the student's device and in its dtype
    (StartupError naming the field where it is no model, or its tokenizer maps tokens to
    other ids than the student's: the penalty compares log-probs of the same token ids)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.views import VocabularyMismatch, assert_shared_vocabulary
    from learner.tiny_model import resolve_model
    from services.errors import StartupError

    path = resolve_model(config.algorithm.kl_reference, "algorithm.kl_reference")
    try:
        assert_shared_vocabulary(AutoTokenizer.from_pretrained(resolve_model(config.model.path)),
                                 AutoTokenizer.from_pretrained(path))
    except VocabularyMismatch as err:
        raise StartupError(f"algorithm.kl_reference: {config.algorithm.kl_reference!r}: {err}") from None
    weight = next(student.parameters())
    return AutoModelForCausalLM.from_pretrained(path, dtype=weight.dtype).to(weight.device)


class TorchTrainer:
    # The DeepSpeed engine (learner.deepspeed_trainer) keeps its own optimiser precision.
    uses_master_weights = True
    fused_optimizer = True

    def __init__(self, model: torch.nn.Module, config: Config, pad_id: int,
                 teacher: TeacherPolicy | None = None) -> None:
        self.model = model
        self.config = config
        self.algo = config.algorithm
        self.method = make_method(config.algorithm)
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.lora = config.learner.lora_rank > 0  # learner.lora: only the adapters train; published merged
        self.temperature = config.actor.temperature
        self.chunk_tokens = config.learner.head_chunk_tokens
        if config.learner.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        param_dtype = next(model.parameters()).dtype
        on_cuda = self.device.type == "cuda"
        self.masters = MasterWeights(model.parameters()) \
            if config.learner.master_weights and param_dtype != torch.float32 and self.uses_master_weights else None
        self.trained_params = self.masters.params if self.masters else [p for p in model.parameters()
                                                                        if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trained_params, lr=config.learner.lr,
                                           weight_decay=config.learner.weight_decay,
                                           fused=on_cuda and self.fused_optimizer)
        self.teacher = teacher or make_teacher_policy(
            self.algo.teacher, model, ema_decay=self.algo.teacher_ema_decay,
            sync_every=self.algo.teacher_sync_every)
        # the KL penalty's reference (algorithm.kl_coef): a model of its own (kl_reference),
        # else θ0, which a frozen teacher already holds
        self.reference: FrozenTeacher | None = None
        if self.algo.kl_reference is not None:
            self.reference = FrozenTeacher(load_reference(config, model))
        elif self.algo.kl_coef > 0:
            self.reference = self.teacher if isinstance(self.teacher, FrozenTeacher) else FrozenTeacher(model)
        # float32 parameters compute in bf16 on CUDA; low-precision parameters in their dtype
        autocast = on_cuda and param_dtype == torch.float32
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast)
        self.compute_dtype = torch.bfloat16 if autocast else param_dtype
        # Teacher views that share a context (HSD's prompt + peer) run it once; see
        # learner.logprobs.shared_prefix_hidden.
        self.share_contexts = True
        self.head_route = logits_are_linear_in_hidden(model, PROBE_IDS)
        if not self.head_route:
            log.warning("%s's logits are not h·Wᵀ: the learner computes whole logits (more memory)%s",
                        type(model).__name__, ", uncompiled" if config.learner.compile else "")
        # learner.compile: the cache-free passes of this model's backbone run compiled. The
        # shared-context teacher pass and generation keep the plain module: their KV cache's
        # shapes and strides change with every call and would recompile it each time.
        self.compiled: tuple[torch.nn.Module, torch.nn.Module] | None = None
        if config.learner.compile and self.head_route:
            backbone = split_causal_lm(model)[0]
            self.compiled = (backbone, torch.compile(backbone, dynamic=True))

    # ------------------------------------------------------------------ engine hooks
    # A data-parallel engine (learner.deepspeed_trainer) overrides these; the step itself
    # is written once, below.

    @property
    def student(self) -> torch.nn.Module:
        """The module the dense route's student forward runs through."""
        return self.model

    def plan(self, samples: Sequence[TrainingSample]) -> list[list[int]]:
        """This process's micro-batches (indices into ``samples``)."""
        return microbatches(samples, self.config.learner.microbatch_tokens)

    def teacher_plan(self, samples: Sequence[TrainingSample], mine: Sequence[int]) -> list[list[int]]:
        """The teacher passes over this process's samples (an empty one: an idle pass)."""
        return teacher_batches(samples, mine, self.config.learner.microbatch_tokens)

    def idle_pass(self, sample: TrainingSample) -> None:
        """Stands in for a micro-batch this process does not have (data parallel only)."""

    def idle_teacher_pass(self, sample: TrainingSample) -> None:
        """Stands in for a teacher forward this process does not need (data parallel only)."""

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)
        self.optimizer.zero_grad(set_to_none=True)

    def set_lr(self, lr: float) -> None:
        """The lr of the next optimiser step (learner.lr_schedule)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def optimizer_step(self) -> float:
        """Clip, step; the gradient norm before clipping."""
        if self.masters:
            self.masters.take_grads()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trained_params, self.config.learner.grad_clip)
        self.optimizer.step()
        if self.masters:
            self.masters.give_weights()
        return float(grad_norm)

    def after_step(self) -> None:
        self.teacher.after_step(self.model)

    def merge(self, credit: dict[int, torch.Tensor], is_stats: list[dict[str, float]],
              totals: dict[str, float]) -> tuple[dict[int, torch.Tensor], list[dict[str, float]], dict[str, float]]:
        """What every process of the step measured, together (data parallel only)."""
        return credit, is_stats, totals

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole weights, for publication and the Hugging Face checkpoint (with LoRA:
        merged, under the model's own names)."""
        return merged_state_dict(self.model) if self.lora else self.model.state_dict()

    def policy_states(self) -> dict[str, Any]:
        """The teacher's state, and θ0's where the KL penalty keeps a copy of its own."""
        own_reference = self.reference is not None and self.reference is not self.teacher
        return {"teacher": self.teacher.state_dict(), "reference": self.reference.state_dict() if own_reference else None}

    def load_policy_states(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        if self.reference is not None and self.reference is not self.teacher:
            if state.get("reference") is None:
                raise ValueError("the checkpoint holds no initial weights for algorithm.kl_coef > 0 "
                                 "(it was written by a run without the KL penalty)")
            self.reference.load_state_dict(state["reference"])

    def save_state(self, directory: Path) -> None:
        """Optimiser and teacher state into ``directory`` (a checkpoint being written)."""
        torch.save({"optimizer": self.optimizer.state_dict(), **self.policy_states(),
                    "masters": self.masters.state_dict() if self.masters else None,
                    "adapters": adapter_state_dict(self.model) if self.lora else None},
                   directory / "optimizer.pt")

    def load_state(self, directory: Path) -> None:
        state = torch.load(directory / "optimizer.pt", weights_only=True)
        if self.lora:
            if state.get("adapters") is None:
                raise ValueError("the checkpoint holds no LoRA adapters (it was written by a run without "
                                 "learner.lora_rank)")
            load_adapters(self.model, state["adapters"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_policy_states(state)
        if self.masters and state.get("masters") is not None:
            self.masters.load_state_dict(state["masters"])

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ the step

    def train_step(self, samples: Sequence[TrainingSample]) -> StepResult:
        start = time.perf_counter()
        if not samples:  # e.g. an srt batch without one accepted revision: nothing to learn from
            return StepResult(self._metrics([], {}, [], {"loss": 0.0}, 0.0))
        self.model.train()
        n_tok = sum(s.length for s in samples)
        n_seq = len(samples)
        norm = {"num_tokens": n_tok, "num_sequences": n_seq,
                "constant_length": self.algo.constant_length or self.config.model.max_response_tokens}
        groups = self.plan(samples)
        teacher_lp: dict[int, torch.Tensor] = {}
        teacher_top: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._score_teachers(samples, [k for mb in groups for k in mb], teacher_lp, teacher_top)
        reference_lp = self._score_reference(samples, groups)
        old_lp: dict[int, torch.Tensor] = {}
        totals: dict[str, float] = {"loss": 0.0}
        is_stats: list[dict[str, float]] = []
        for epoch in range(self.config.learner.epochs):
            self.zero_grad()
            for mb in groups:
                if not mb:
                    self.idle_pass(samples[0])
                    continue
                batch = [samples[k] for k in mb]
                loss = self._student_loss(mb, batch, old_lp if epoch else None, old_lp, teacher_lp, teacher_top,
                                          reference_lp, norm, is_stats)
                self.backward(loss)
                totals["loss"] += float(loss.detach())
            grad_norm = self.optimizer_step()
        self.after_step()
        credit = {k: token_credit(teacher_lp[k], old_lp[k], torch.ones_like(old_lp[k], dtype=torch.bool))
                  for k in teacher_lp}
        credit, is_stats, totals = self.merge(credit, is_stats, totals)
        metrics = self._metrics(samples, credit, is_stats, totals, grad_norm)
        if reference_lp:  # sampled KL(π_θold ‖ π_θ0) per token: how far the penalty lets the policy go
            metrics["reference_kl"] = float(sum((old_lp[k] - reference_lp[k]).sum() for k in reference_lp)
                                            / max(sum(reference_lp[k].numel() for k in reference_lp), 1))
        return StepResult(metrics, credit, time.perf_counter() - start, n_tok)

    def _response_hidden(self, backbone: torch.nn.Module, inputs: Sequence[ScoringInput]):
        """The backbone's states at the response positions: packed or padded (``learner.packing``)."""
        if self.compiled and backbone is self.compiled[0]:
            backbone = self.compiled[1]
        if self.config.learner.packing:
            return packed_response_hidden(backbone, inputs, self.device)
        return response_hidden(backbone, inputs, self.pad_id, self.device)

    def _scores(self, module: torch.nn.Module, inputs: Sequence[ScoringInput], topk: int,
                share_contexts: bool = False):
        """No-grad (log-probs [B, N], top-k (values, ids) [B, N, k] or None) of ``inputs``."""
        with torch.no_grad(), self.autocast:
            if self.head_route:
                backbone, weight = split_causal_lm(module)
                got = shared_prefix_hidden(backbone, inputs, self.device) if share_contexts else None
                hidden, targets, mask = got or self._response_hidden(backbone, inputs)
                return head_scores(hidden, weight, targets, mask, temperature=self.temperature,
                                   chunk_tokens=self.chunk_tokens, topk=topk, compute_dtype=self.compute_dtype)
            logits, targets, mask = dense_response_logits(module, inputs, self.pad_id)
        logits = logits.float() / self.temperature
        top = logits.topk(min(topk, logits.shape[-1]), dim=-1) if topk else None
        return token_logprobs(logits, targets) * mask, (top.values, top.indices) if top else None

    @torch.no_grad()
    def _score_teachers(self, samples, mine, teacher_lp, teacher_top) -> None:
        """log π_T (and the top-k logits) of every teacher view among ``mine``, in passes of
        their own: without gradients they need no activations kept, and views that share
        a context go together."""
        plan = self.teacher_plan(samples, mine)
        if not plan:
            return
        module = self.teacher.module(self.model)
        was_training = module.training
        module.eval()
        topk = self.method.teacher_topk
        for batch in plan:
            if not batch:
                self.idle_teacher_pass(samples[0])
                continue
            logp, top = self._scores(module, [samples[k].teacher for k in batch], topk, self.share_contexts)
            logp = logp.cpu()
            top = (top[0].cpu(), top[1].cpu()) if top else None
            for row, k in enumerate(batch):
                n = samples[k].length
                teacher_lp[k] = logp[row, :n]
                if top:
                    teacher_top[k] = (top[0][row, :n], top[1][row, :n])
        module.train(was_training)

    @torch.no_grad()
    def _score_reference(self, samples, groups) -> dict[int, torch.Tensor]:
        """log π_θ0(y_t) of this process's student views (``kl_coef`` > 0), by micro-batch;
        {} without the KL penalty. θ0 is a local copy: no collective, no idle passes."""
        if self.reference is None:
            return {}
        module = self.reference.module(self.model)
        out = {}
        for mb in groups:
            if mb:
                logp, _ = self._scores(module, [samples[k].student for k in mb], 0)
                logp = logp.cpu()
                out.update({k: logp[row, : samples[k].length] for row, k in enumerate(mb)})
        return out

    def _student_loss(self, mb, batch, old, old_out, teacher_lp, teacher_top, reference_lp, norm,
                      is_stats) -> torch.Tensor:
        """The method's loss on this micro-batch, differentiable in the student's weights.
        ``old`` holds π_θold from the first epoch (None in the first epoch: the student's
        own log-probs, detached, are π_θold and are written to ``old_out``)."""
        dev = self.device
        width = max(s.length for s in batch)
        mu = _pad_rows([s.behaviour for s in batch], width).to(dev)
        outcome = torch.tensor([s.advantage for s in batch], device=dev)
        distilled = torch.tensor([k in teacher_lp for k in mb], device=dev)
        old_padded = _pad_rows([old[k] for k in mb], width).to(dev) if old is not None else None
        reference = _pad_rows([reference_lp[k] for k in mb], width).to(dev) if reference_lp else None
        teacher_logprobs = top_values = top_ids = None
        if bool(distilled.any()):
            if not self.method.teacher_topk:
                teacher_logprobs = _pad_rows([teacher_lp.get(k, torch.zeros(0)) for k in mb], width).to(dev)
            else:
                tops = [teacher_top.get(k) for k in mb]
                k = next(t[0].shape[-1] for t in tops if t is not None)
                top_values = _pad_topk([t[0] if t else None for t in tops], width, k, torch.float32).to(dev)
                top_ids = _pad_topk([t[1] if t else None for t in tops], width, k, torch.long).to(dev)
        firsts: list[tuple[slice, torch.Tensor]] = []  # π_θold of each chunk, first epoch

        def loss_of_chunk(rows: slice, logits: torch.Tensor) -> torch.Tensor:
            m = mask[rows]
            logp = token_logprobs(logits, targets[rows]) * m
            if old_padded is None:
                prev = logp.detach()
                firsts.append((rows, prev))
            else:
                prev = old_padded[rows]
            w, stats = importance_weights(prev, mu[rows], m, self.algo.is_mode,
                                          self.algo.is_rho_max, self.algo.is_rho_min)
            if old_padded is None:  # the policy's entropy on its own tokens, measured once a step
                with torch.no_grad():
                    entropy, tokens = torch.stack([(token_entropy(logits) * m).sum(), m.sum()]).tolist()
                stats = {**stats, "entropy_sum": entropy, "tokens": tokens}
            is_stats.append(stats)
            state_w = (prefix_weights(prev, mu[rows], m, self.algo.is_mode, self.algo.is_rho_max)
                       if top_values is not None else None)
            return self.method.loss(LossTerms(
                logprobs=logp, old_logprobs=prev, mask=m, is_weights=w, state_weights=state_w,
                outcome=outcome[rows],
                distilled=distilled[rows],
                teacher_logprobs=None if teacher_logprobs is None else teacher_logprobs[rows],
                teacher_topk_logits=None if top_values is None else top_values[rows],
                student_topk_logits=None if top_ids is None else logits.gather(-1, top_ids[rows]),
                reference_logprobs=None if reference is None else reference[rows], norm=norm))

        inputs = [s.student for s in batch]
        with self.autocast:
            if self.head_route:
                backbone, weight = split_causal_lm(self.model)
                hidden, targets, mask = self._response_hidden(backbone, inputs)
                loss = head_loss(hidden, weight, loss_of_chunk, temperature=self.temperature,
                                 chunk_tokens=self.chunk_tokens, compute_dtype=self.compute_dtype)
            else:
                logits, targets, mask = dense_response_logits(self.student, inputs, self.pad_id)
                loss = loss_of_chunk(slice(None), logits.float() / self.temperature)
        if firsts:
            on_cpu = torch.cat([prev for _, prev in firsts]).cpu()  # chunks are consecutive rows, in order
            for row, key in enumerate(mb):
                old_out[key] = on_cpu[row, : batch[row].length]
        return loss

    def _metrics(self, samples, credit, is_stats, totals, grad_norm) -> dict[str, float]:
        n = max(len(is_stats), 1)
        deltas = torch.cat(list(credit.values())) if credit else torch.zeros(0)
        return {
            "loss": totals["loss"] / max(self.config.learner.epochs, 1),
            "grad_norm": grad_norm,
            "rho_mean": sum(s["rho_mean"] for s in is_stats) / n,
            "rho_max": max((s["rho_max"] for s in is_stats), default=1.0),
            "ess_fraction": sum(s["ess_fraction"] for s in is_stats) / n,
            "is_masked_fraction": sum(s["masked_fraction"] for s in is_stats) / n,
            # sampled estimate of KL(π_θ ‖ π_T) on the distilled tokens: E[log π_θ − log π_T]
            "teacher_kl": float(-deltas.mean()) if deltas.numel() else 0.0,
            # mean over response tokens of H(π_θ(·|context)), nats: a collapsing policy shows here first
            "entropy": (sum(s.get("entropy_sum", 0.0) for s in is_stats)
                        / max(sum(s.get("tokens", 0.0) for s in is_stats), 1.0)),
            # mean δ²: on a fixed batch the credit-as-advantage update is the gradient of
            # ½·Σδ² in the student's log-probs, so this is what that term drives down
            "credit_sq": float((deltas * deltas).mean()) if deltas.numel() else 0.0,
            "distilled_fraction": len(credit) / max(len(samples), 1),
        }
