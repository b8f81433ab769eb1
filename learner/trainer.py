"""The torch training engine: one optimiser update per replay batch.

Per micro-batch (grouped to a token budget), for each of ``epochs`` passes:

1. teacher pass (no grad, first epoch only): log π_T(y_t | c, y_<t) at y's positions of the
   teacher view, and for ``topk`` the teacher's top-k logits there; a context c that several
   samples share (HSD's prompt + peer, OPSD's prompt + answer) is run once and its KV cache
   reused (learner.logprobs.shared_prefix_logits);
2. student pass (grad): log π_θ(y_t | x, y_<t); in the first epoch these, detached, are
   π_θold — no separate forward;
3. IS weights w_t from π_θold/μ (learner.staleness), then the method's loss
   (methods.base.Method.loss: A_t = A_i + λ·δ_t with δ_t = log π_T − log π_θold for
   ``sampled``, or A_i plus λ × the top-k mixed KL for ``topk``; srt: supervised);
4. loss normalised over the *global* batch (token count / sequence count of all
   micro-batches), backward (gradients accumulate).

Then gradient clipping, the optimiser step and the teacher policy's update. Logits are
divided by the actors' sampling temperature so that π_θold is comparable with μ.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.config import Config
from core.views import ScoringInput
from learner.batch import microbatches
from learner.logprobs import pad_batch, response_logits, shared_prefix_logits, token_logprobs
from learner.staleness import importance_weights
from learner.teacher import TeacherPolicy, make_teacher_policy
from methods import make_method
from methods.base import LossTerms, TrainingSample
from methods.credit import token_credit


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


class TorchTrainer:
    def __init__(self, model: torch.nn.Module, config: Config, pad_id: int,
                 teacher: TeacherPolicy | None = None) -> None:
        self.model = model
        self.config = config
        self.algo = config.algorithm
        self.method = make_method(config.algorithm)
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.temperature = config.actor.temperature
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.learner.lr,
                                           weight_decay=config.learner.weight_decay)
        self.teacher = teacher or make_teacher_policy(
            self.algo.teacher, model, ema_decay=self.algo.teacher_ema_decay,
            sync_every=self.algo.teacher_sync_every)
        # Teacher views that share a context (HSD's prompt + peer) run it once; see
        # learner.logprobs.shared_prefix_logits.
        self.share_contexts = True
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" \
            else torch.autocast("cpu", enabled=False)

    def _forward(self, module: torch.nn.Module, inputs: Sequence[ScoringInput], share_contexts: bool = False):
        with self.autocast:
            shared = shared_prefix_logits(module, inputs, self.device) if share_contexts else None
            if shared is None:
                ids, attn = pad_batch(inputs, self.pad_id, self.device)
                shared = response_logits(module(input_ids=ids, attention_mask=attn).logits, inputs)
        resp, resp_ids, mask = shared
        resp = resp.float() / self.temperature
        return token_logprobs(resp, resp_ids) * mask, resp, mask

    # ------------------------------------------------------------------ engine hooks
    # A data-parallel engine (learner.deepspeed_trainer) overrides these; the step itself
    # is written once, below.

    @property
    def student(self) -> torch.nn.Module:
        """The module the student forward/backward runs through."""
        return self.model

    def plan(self, samples: Sequence[TrainingSample]) -> list[list[int]]:
        """This process's micro-batches (indices into ``samples``)."""
        return microbatches(samples, self.config.learner.microbatch_tokens)

    def idle_pass(self, sample: TrainingSample) -> None:
        """Stands in for a micro-batch this process does not have (data parallel only)."""

    def idle_teacher_pass(self, sample: TrainingSample) -> None:
        """Stands in for a teacher forward this process does not need (data parallel only)."""

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def optimizer_step(self) -> float:
        """Clip, step; the gradient norm before clipping."""
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.learner.grad_clip)
        self.optimizer.step()
        return float(grad_norm)

    def after_step(self) -> None:
        self.teacher.after_step(self.model)

    def merge(self, credit: dict[int, torch.Tensor], is_stats: list[dict[str, float]],
              totals: dict[str, float]) -> tuple[dict[int, torch.Tensor], list[dict[str, float]], dict[str, float]]:
        """What every process of the step measured, together (data parallel only)."""
        return credit, is_stats, totals

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole weights, for publication and the Hugging Face checkpoint."""
        return self.model.state_dict()

    def save_state(self, directory: Path) -> None:
        """Optimiser and teacher state into ``directory`` (a checkpoint being written)."""
        torch.save({"optimizer": self.optimizer.state_dict(), "teacher": self.teacher.state_dict()},
                   directory / "optimizer.pt")

    def load_state(self, directory: Path) -> None:
        state = torch.load(directory / "optimizer.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.teacher.load_state_dict(state["teacher"])

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
        old_lp: dict[int, torch.Tensor] = {}
        totals: dict[str, float] = {"loss": 0.0}
        is_stats: list[dict[str, float]] = []
        for epoch in range(self.config.learner.epochs):
            self.optimizer.zero_grad(set_to_none=True)
            for mb in groups:
                if not mb:
                    self.idle_pass(samples[0])
                    continue
                batch = [samples[k] for k in mb]
                if epoch == 0:
                    self._score_teacher(mb, batch, teacher_lp, teacher_top)
                logp, logits, mask = self._forward(self.student, [s.student for s in batch])
                width = mask.shape[1]
                if epoch == 0:
                    for row, k in enumerate(mb):
                        old_lp[k] = logp[row, : samples[k].length].detach().cpu()
                old = _pad_rows([old_lp[k] for k in mb], width).to(self.device)
                mu = _pad_rows([s.behaviour for s in batch], width).to(self.device)
                w, stats = importance_weights(old, mu, mask, self.algo.is_mode,
                                              self.algo.is_rho_max, self.algo.is_rho_min)
                is_stats.append(stats)
                loss = self._loss(mb, batch, logp, logits, old, mask, w, teacher_lp, teacher_top, norm)
                self.backward(loss)
                totals["loss"] += float(loss.detach())
            grad_norm = self.optimizer_step()
        self.after_step()
        credit = {k: token_credit(teacher_lp[k], old_lp[k], torch.ones_like(old_lp[k], dtype=torch.bool))
                  for k in teacher_lp}
        credit, is_stats, totals = self.merge(credit, is_stats, totals)
        metrics = self._metrics(samples, credit, is_stats, totals, grad_norm)
        return StepResult(metrics, credit, time.perf_counter() - start, n_tok)

    @torch.no_grad()
    def _score_teacher(self, mb, batch, teacher_lp, teacher_top) -> None:
        rows = [(k, s) for k, s in zip(mb, batch, strict=True) if s.teacher is not None]
        if not rows:
            self.idle_teacher_pass(batch[0])
            return
        module = self.teacher.module(self.model)
        was_training = module.training
        module.eval()
        logp, logits, _ = self._forward(module, [s.teacher for _, s in rows], self.share_contexts)
        module.train(was_training)
        for row, (k, s) in enumerate(rows):
            teacher_lp[k] = logp[row, : s.length].cpu()
            if self.algo.loss == "topk":
                top = logits[row, : s.length].topk(min(self.algo.topk, logits.shape[-1]), dim=-1)
                teacher_top[k] = (top.values.cpu(), top.indices.cpu())

    def _loss(self, mb, batch, logp, logits, old, mask, w, teacher_lp, teacher_top, norm) -> torch.Tensor:
        """The method's loss on this micro-batch (teacher tensors laid out for the loss form)."""
        width = mask.shape[1]
        distilled = torch.tensor([k in teacher_lp for k in mb], device=self.device)
        any_distilled = bool(distilled.any())
        teacher_logprobs = teacher_logits = None
        if self.algo.loss == "sampled" and any_distilled:
            teacher_logprobs = _pad_rows([teacher_lp.get(k, torch.zeros(0)) for k in mb], width).to(self.device)
        if self.algo.loss == "topk" and any_distilled:
            teacher_logits = torch.full((len(mb), width, logits.shape[-1]), float("-inf"), device=self.device)
            for row, key in enumerate(mb):
                if key in teacher_top:
                    values, indices = teacher_top[key]
                    teacher_logits[row, : values.shape[0]].scatter_(-1, indices.to(self.device), values.to(self.device))
        return self.method.loss(LossTerms(
            logprobs=logp, logits=logits, old_logprobs=old, mask=mask, is_weights=w,
            outcome=torch.tensor([s.advantage for s in batch], device=self.device), distilled=distilled,
            teacher_logprobs=teacher_logprobs, teacher_logits=teacher_logits, norm=norm))

    def _metrics(self, samples, credit, is_stats, totals, grad_norm) -> dict[str, float]:
        n = max(len(is_stats), 1)
        deltas = torch.cat(list(credit.values())) if credit else torch.zeros(0)
        return {
            "loss": totals["loss"] / max(self.config.learner.epochs, 1),
            "grad_norm": grad_norm,
            "reward_mean": sum(s.reward for s in samples) / max(len(samples), 1),
            "rho_mean": sum(s["rho_mean"] for s in is_stats) / n,
            "rho_max": max((s["rho_max"] for s in is_stats), default=1.0),
            "ess_fraction": sum(s["ess_fraction"] for s in is_stats) / n,
            "is_masked_fraction": sum(s["masked_fraction"] for s in is_stats) / n,
            # sampled estimate of KL(π_θ ‖ π_T) on the distilled tokens: E[log π_θ − log π_T]
            "teacher_kl": float(-deltas.mean()) if deltas.numel() else 0.0,
            # mean δ²: on a fixed batch the credit-as-advantage update is the gradient of
            # ½·Σδ² in the student's log-probs, so this is what that term drives down
            "credit_sq": float((deltas * deltas).mean()) if deltas.numel() else 0.0,
            "distilled_fraction": len(credit) / max(len(samples), 1),
        }
