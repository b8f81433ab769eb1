"""The learner service: admission → replay batch → teacher scoring + step → publish → ack.

Lifecycle::

    start: load the model (or the latest checkpoint with --resume); versions an earlier
           learner published past that checkpoint are marked lost and skipped; host the
           weight service, publish the current version, write weights address + config
           hash + version to hsd:{run}:state (actors join on that, and follow it)
    loop (until `steps` committed or stop()):
        admit prompts while in flight < (η+1)·B
        batch ← replay (stale groups dropped, malformed dead-lettered)
        train step (teacher scoring, staleness-corrected loss, optimiser) → version + 1
        publish version; metrics; credit log every N steps
        every checkpoint_every steps: checkpoint, then XACK the groups it covers
        every eval_every steps (and before the first and after the last): held-out accuracy
    end: final checkpoint + ack, summary, state status = done (steps trained) or stopped

Acknowledging only after a checkpoint makes kill -9 safe: the groups of steps after the
last checkpoint are still pending in Redis, and `--resume` re-reads and retrains them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
import torch
from prometheus_client import REGISTRY, CollectorRegistry

from core.config import Config, MiB, config_differences, config_hash, shared_view
from core.prompts import use_chat_template_kwargs
from core.records import PromptItem
from core.views import assert_shared_vocabulary
from learner import checkpoint as ckpt
from learner.batch import ReferencePeers, build_samples, peer_is_reference, with_peer_source
from learner.curves import check_available, curve_sinks
from learner.engines import make_trainer
from learner.lr_schedule import lr_factor
from learner.replay import ReplayBuffer, ReplaySettings, TaggedGroup
from learner.step_log import StepLog
from learner.trainer import StepResult
from methods.base import TrainingSample
from methods.credit import CreditProfile, credit_profile
from services.errors import StartupError
from services.metrics import CreditMetrics, LearnerMetrics, ReplayMetrics, WeightsMetrics
from services.transport.redis_client import used_memory
from services.transport.streams import Keys, PromptAdmission
from services.weights.publisher import AsyncPublisher
from services.weights.server import WeightServer

if TYPE_CHECKING:
    from learner.evaluation import HeldOutResult

log = logging.getLogger(__name__)


class Learner:
    def __init__(self, config: Config, client: redis.Redis, model_path: str, *, resume: bool = False,
                 force_config: bool = False, registry: CollectorRegistry = REGISTRY, prompts: Any = None) -> None:
        self.config = config
        self.client = client
        self.keys = Keys(config.run.name)
        self.run_dir = Path(config.run.dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        check_available(config)
        self.step_log = StepLog(self.run_dir, config.run.steps, curve_sinks(config, self.run_dir))
        self.stop_event = threading.Event()
        resume_from, self.model, self.tokenizer, self.trainer = load_trainer(config, model_path, resume, force_config)
        self.method = self.trainer.method  # one instance a process: the trainer's
        self.step, self.version = 0, 0
        if resume_from:
            meta = ckpt.read_meta(resume_from)
            ckpt.restore_trainer(resume_from, self.trainer)
            self.step, self.version = meta.step, meta.version
            log.info("resumed from %s at step %d, version %d", resume_from, self.step, self.version)
        self.metrics = LearnerMetrics(registry)
        self.checkpointed_at = time.time()
        self._export_live_gauges()
        self.credit_metrics = CreditMetrics(registry)
        self.weights_metrics = WeightsMetrics(registry)
        self.replay = ReplayBuffer(client, self.keys, ReplaySettings.from_config(config, self.model.config.vocab_size),
                                   metrics=ReplayMetrics(registry))
        if resume_from:
            # a crash between writing the checkpoint and committing its groups (Redis down,
            # kill -9) left them pending: they are in these weights, so commit them, not retrain
            self.replay.commit_recovered(meta.committed)
        self.admission = PromptAdmission(client, self.keys, admission_capacity(config))
        self.prompts = iter(prompts) if prompts is not None else self._task_prompts()
        w = config.weights
        self.weights = WeightServer(
            w.host, w.port, keep=w.keep_versions, chunk_bytes=w.chunk_bytes, token=w.token, max_watchers=w.max_watchers,
            tls_cert=w.tls_cert, tls_key=w.tls_key, bulk_port=w.bulk_port if w.bulk else None,
            on_publish=lambda snap, s: (self.weights_metrics.version.set(snap.version),
                                        self.weights_metrics.publish_seconds.set(s)),
            on_bytes_sent=self.weights_metrics.bytes_sent.inc)
        self.publisher = AsyncPublisher(self.weights, on_published=self._published)
        self.unacked: list[TaggedGroup] = []  # trained, waiting for a checkpoint
        self.history: dict[str, list[float]] = {"reward": [], "staleness": [], "abs_mean": [], "silence": [],
                                                "divergence_mass": [], "peak_offset": [], "revision_success": [],
                                                "peer_is_reference": []}
        self.trained_groups = 0
        self.trained_samples = 0
        self.trained_revisions = 0  # srt's second-stage samples in the trained groups
        self.idle_s = 0.0
        self.loop_s = 0.0  # wall time of the training loop (startup and evaluation excluded)
        self.eval_by_step: dict[int, float] = {}
        self.eval_details: dict[int, HeldOutResult] = {}
        self.evaluation = self._held_out_eval() if config.learner.eval_every else None
        # the reference solutions: the peers of peer_source "reference", and what a peer-reading
        # method's in-group peers are measured against (peer_is_reference)
        self.reference_peers = ReferencePeers(self._task(), self.tokenizer) if self.method.reads_peer else None

    def _task(self):
        from core.tasks import configured_task

        return configured_task(self.config)

    def _task_prompts(self):
        task = self._task()
        for n, p in enumerate(task.problems("train", seed=self.config.run.seed)):
            yield PromptItem(p.prompt_id, task.name, p.prompt, p.answer, self.version,
                             sampling_seed=sampling_seed(self.config.run.seed, n))

    def _held_out_eval(self):
        from core.engines.base import SamplingSettings
        from learner.evaluation import HeldOutEval

        c = self.config
        sampling = SamplingSettings(n=c.learner.eval_samples, max_tokens=c.model.max_response_tokens,
                                    temperature=c.actor.temperature, top_p=c.actor.top_p)
        # one fixed held-out set and decoding seed for every run, so that runs compare
        return HeldOutEval(self._task(), self.model, self.tokenizer, problems=c.learner.eval_problems,
                           sampling=sampling, seed=0) or None

    def _evaluate(self) -> None:
        if self.evaluation is None or self.step in self.eval_by_step:
            return
        started = time.monotonic()
        result = self.evaluation.evaluate()
        self.eval_by_step[self.step] = result.accuracy
        self.eval_details[self.step] = result
        self.metrics.eval_accuracy.set(result.accuracy)
        self.step_log.evaluation(self.step, result.accuracy, result.accuracy_by_length, result.reference_logprob)
        by_length = " ".join(f"k={k} {a:.3f}" for k, a in result.accuracy_by_length.items())
        reference = "" if result.reference_logprob is None else f"; reference log-prob {result.reference_logprob:.3f}"
        log.info("held-out accuracy at step %d: %.3f%s%s (%d problems x %d samples, %.1fs)", self.step,
                 result.accuracy, f" ({by_length})" if by_length else "", reference,
                 len(self.evaluation.problems), self.evaluation.sampling.n, time.monotonic() - started)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Learner:
        self._skip_lost_versions()
        self.weights.start()
        self.client.hset(self.keys.state, "version", self.version)
        self._publish()
        self.publisher.flush()  # a version to fetch before actors learn the address
        self.client.hset(self.keys.state, mapping={
            "weights": self.config.weights.advertise or self.weights.address,
            "config_hash": config_hash(self.config), "status": "running"})
        self.metrics.step.set(self.step)
        return self

    def _skip_lost_versions(self) -> None:
        """After a crash, an earlier learner of this run may have published versions past
        the checkpoint resumed from (``state.version`` is written before each publication);
        actors sampled with those weights, which no longer exist. Their range is recorded
        as lost (the replay drops its groups, reason ``lost``) and this learner's weights
        are published under the next unused number, so that actors re-sync to them and no
        version number ever names two different weights."""
        state = self.client.hmget(self.keys.state, ["version", "lost_versions"])
        published = int(state[0]) if state[0] is not None else None
        lost = [tuple(r) for r in json.loads(state[1])] if state[1] else []
        if published is not None and published > self.version:
            lost.append((self.version + 1, published))
            log.warning("versions %d..%d were published after the checkpoint resumed from and are lost: "
                        "their groups are dropped; this learner continues at version %d",
                        self.version + 1, published, published + 1)
            self.version = published + 1
            self.client.hset(self.keys.state, "lost_versions", json.dumps(lost))
        self.replay.lost_versions = lost

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        try:
            self.publisher.close()
        finally:
            self.step_log.close()
            self.trainer.close()
            self.weights.stop(grace=1.0)

    def _published(self, version: int, lag_s: float) -> None:
        """A version the weight service now serves: actors follow it through the run's
        Redis (``state.published``), not through a stream per actor."""
        self.client.hset(self.keys.state, "published", version)
        self.weights_metrics.publish_lag_seconds.observe(lag_s)

    def _publish(self) -> float:
        """Hand the current weights over; a worker publishes them while the next step
        trains (services.weights.publisher). Returns the seconds that took."""
        blocked = self.publisher.submit(self.version, self.trainer.full_state_dict())
        self.metrics.policy_version.set(self.version)
        return blocked

    def run(self, steps: int | None = None) -> None:
        target = steps if steps is not None else self.config.run.steps
        self.step_log.total = target
        every = self.config.learner.eval_every
        self._evaluate()
        while self.step < target and not self.stop_event.is_set():
            started = time.monotonic()
            self.admission.admit(self.prompts, settled=len(self.unacked))
            batch = self.replay.next_batch(self.version, timeout_s=1.0)
            self.idle_s += time.monotonic() - started
            result = self.train(batch) if batch is not None else None
            if result is not None:
                self.step_log.step(self.step, self.version, result.metrics, seconds=result.seconds,
                                   samples=sum(len(t.group.samples) for t in batch), tokens=result.tokens,
                                   staleness=self.history["staleness"][-1])
            self.loop_s += time.monotonic() - started
            self.metrics.idle_fraction.set(self.idle_s / max(self.loop_s, 1e-9))
            if result is not None and every and self.step % every == 0:
                self._evaluate()
        if not self.stop_event.is_set():  # a stop asked for (SIGTERM) does not wait for an evaluation
            self._evaluate()
        self.checkpoint()
        self.publisher.flush()
        # done: the run trained its steps and its actors may leave; stopped: a learner will resume it
        status = "done" if self.step >= target else "stopped"
        self.client.hset(self.keys.state, mapping={"version": self.version, "status": status})

    # ------------------------------------------------------------------ one step

    def _export_live_gauges(self) -> None:
        """Gauges read at scrape time: how old the latest checkpoint is, the learner's CUDA
        memory, the run's Redis memory."""
        m = self.metrics
        m.checkpoint_age.set_function(lambda: time.time() - self.checkpointed_at)
        device = next(self.model.parameters()).device
        on_cuda = device.type == "cuda"
        m.gpu_memory.labels("allocated").set_function(lambda: torch.cuda.memory_allocated(device) if on_cuda else 0)
        m.gpu_memory.labels("peak").set_function(lambda: torch.cuda.max_memory_allocated(device) if on_cuda else 0)
        m.redis_memory.set_function(lambda: used_memory(self.client))

    def lr(self) -> float:
        """The lr of the step after ``self.step`` steps (learner.lr_schedule)."""
        c = self.config.learner
        return c.lr * lr_factor(self.step, c.lr_schedule, c.warmup_steps, c.schedule_steps or self.config.run.steps)

    def train(self, batch: list[TaggedGroup]) -> StepResult | None:
        """One step on ``batch``; None when no group of it was usable (nothing trained)."""
        unusable: set[bytes] = set()  # entry ids

        def reject(t: TaggedGroup, err: Exception) -> None:
            log.warning("dead-lettering group %s: no training sample can be made of it: %s", t.group.group_id, err)
            self.replay.reject_unusable(t, err)
            unusable.add(t.entry_id)

        source = self.config.algorithm.peer_source
        if source != "group":
            batch = with_peer_source(batch, source, self.reference_peers, self.config.run.seed)
        samples = build_samples(batch, self.tokenizer, self.method, on_unusable=reject)
        batch = [t for t in batch if t.entry_id not in unusable]
        if not batch:
            return None
        self.trainer.set_lr(self.lr())
        result = self.trainer.train_step(samples)
        # the batch's rollouts, not its training samples (srt trains on revisions of wrong attempts only)
        result.metrics["reward_mean"] = statistics.fmean(s.reward for t in batch for s in t.group.samples)
        result.metrics["lr"] = self.lr()
        result.metrics.update(outcome_signal(batch))
        self.step += 1
        self.version += 1
        self.client.hset(self.keys.state, "version", self.version)  # before any actor can see it
        # the loop's own wait (start-up's first hand-over, which allocates the host buffers, is not in it)
        self.weights_metrics.publish_blocked_seconds.observe(self._publish())
        self.unacked.extend(batch)
        self.trained_groups += len(batch)
        self.trained_samples += sum(len(t.group.samples) for t in batch)
        self.trained_revisions += sum(s.revision is not None for t in batch for s in t.group.samples)
        profiles = self._profiles(samples, result)
        self._observe(batch, result, list(profiles.values()))
        every = self.config.learner.checkpoint_every
        if every == 0:
            self.replay.commit(self.unacked)  # no durability asked for: ack at once
            self.unacked = []
        elif self.step % every == 0:
            self.checkpoint()
        if self.config.learner.credit_log_every and self.step % self.config.learner.credit_log_every == 0:
            self._credit_log(samples, result, profiles)
        return result

    def checkpoint(self) -> None:
        if self.config.learner.checkpoint_every == 0:
            return
        committed = [[t.entry_id.decode(), t.group.group_id] for t in self.unacked]
        ckpt.save(self.ckpt_dir, ckpt.CheckpointMeta(self.step, self.version, config_hash(self.config),
                                                     shared_view(self.config), committed),
                  self.trainer, self.tokenizer, keep=self.config.learner.keep_checkpoints)
        self.checkpointed_at = time.time()
        self.replay.commit(self.unacked)
        self.unacked = []

    def _observe(self, batch: list[TaggedGroup], result: StepResult, profiles: list[CreditProfile]) -> None:
        m = result.metrics
        self.metrics.step.set(self.step)
        self.metrics.step_seconds.observe(result.seconds)
        self.metrics.tokens_per_second.set(result.tokens / max(result.seconds, 1e-9))
        self.metrics.loss.set(m["loss"])
        self.metrics.grad_norm.set(m["grad_norm"])
        self.metrics.entropy.set(m["entropy"])
        self.metrics.learning_rate.set(result.metrics["lr"])
        self.metrics.truncated_fraction.set(result.metrics["truncated_fraction"])
        self.metrics.zero_std_fraction.set(result.metrics["zero_std_fraction"])
        lengths = [s.ids.size for t in batch for s in t.group.samples]
        self.metrics.response_tokens.set(statistics.fmean(lengths) if lengths else 0.0)
        self.metrics.importance_ratio.observe(m["rho_mean"])
        self.metrics.is_masked_fraction.set(m["is_masked_fraction"])
        self.metrics.teacher_kl.set(m["teacher_kl"])
        self.metrics.reward.set(m["reward_mean"])
        lags = [self.version - 1 - t.group.policy_version for t in batch]
        for lag in lags:
            self.metrics.staleness.observe(lag)
        self.history["reward"].append(m["reward_mean"])
        self.history["staleness"].append(statistics.fmean(lags))
        revisions = [s.revision.success for t in batch for s in t.group.samples if s.revision is not None]
        if revisions:  # srt: how often the reviser's continuation is accepted
            self.history["revision_success"].append(statistics.fmean(revisions))
        if self.reference_peers and (same := peer_is_reference(batch, self.reference_peers)) is not None:
            self.history["peer_is_reference"].append(same)
        if profiles:
            abs_means = [p.abs_mean for p in profiles if p.abs_mean is not None]
            silences = [p.silence for p in profiles if p.silence is not None]
            if abs_means:
                self.credit_metrics.abs_mean.set(statistics.fmean(abs_means))
                self.history["abs_mean"].append(statistics.fmean(abs_means))
            if silences:
                self.credit_metrics.silence_fraction.set(statistics.fmean(silences))
                self.history["silence"].append(statistics.fmean(silences))
            for p in profiles:
                if p.divergence_mass is not None:
                    self.credit_metrics.divergence_mass.observe(p.divergence_mass)
                    self.history["divergence_mass"].append(p.divergence_mass)
                if p.peak_offset is not None:
                    self.credit_metrics.peak_offset.observe(p.peak_offset)
                    self.history["peak_offset"].append(p.peak_offset)

    def _profiles(self, samples: list[TrainingSample], result: StepResult) -> dict[int, CreditProfile]:
        a = self.config.algorithm
        return {k: credit_profile(delta, samples[k].student.response, samples[k].peer_ids,
                                  window=a.divergence_window, tau=a.silence_tau)
                for k, delta in result.credit.items()}

    def _credit_log(self, samples: list[TrainingSample], result: StepResult,
                    profiles: dict[int, CreditProfile]) -> None:
        a = self.config.algorithm
        path = self.run_dir / "credit.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        rotate_when_full(path, int(self.config.learner.credit_log_max_mb * MiB))
        with path.open("a") as f:
            for k, delta in result.credit.items():
                s = samples[k]
                y = s.student.response
                profile = profiles[k]
                f.write(json.dumps({
                    "step": self.step, "method": a.method, "group_id": s.group_id, "index": s.index,
                    "reward": s.reward, "peer": s.peer_ref,
                    "tokens": self.tokenizer.convert_ids_to_tokens(y), "delta": [round(float(d), 5) for d in delta],
                    "divergence": profile.divergence, "profile": profile.as_dict(),
                }) + "\n")

    # ------------------------------------------------------------------ summary

    def summary(self) -> dict[str, Any]:
        trained, dropped = self.replay.run_totals()
        h = self.history

        def mean(xs):
            return statistics.fmean(xs) if xs else None

        return {
            "steps": self.step, "final_version": self.version, "method": self.config.algorithm.method,
            # the run's totals (every learner that served it); trained_samples: this process
            "trained_groups": trained, "dropped": dropped,
            "reward_mean_by_step": [round(r, 4) for r in h["reward"]],
            "revision_success_by_step": [round(r, 4) for r in h["revision_success"]],
            "staleness_mean": mean(h["staleness"]),
            "peer_is_reference": mean(h["peer_is_reference"]),
            "credit": {"abs_mean": mean(h["abs_mean"]), "silence": mean(h["silence"]),
                       "divergence_mass": mean(h["divergence_mass"]), "peak_offset": mean(h["peak_offset"])},
            "idle_seconds": round(self.idle_s, 2), "loop_seconds": round(self.loop_s, 2),
            "seconds_per_version": {
                "step": _histogram_mean(self.metrics.step_seconds),
                "publish_blocked": _histogram_mean(self.weights_metrics.publish_blocked_seconds),
                "publish_lag": _histogram_mean(self.weights_metrics.publish_lag_seconds)},
            "trained_samples": self.trained_samples, "trained_revisions": self.trained_revisions,
            "eval_accuracy_by_step": {str(k): round(v, 4) for k, v in sorted(self.eval_by_step.items())},
            "eval_by_length_by_step": {str(k): {str(n): round(a, 4) for n, a in r.accuracy_by_length.items()}
                                       for k, r in sorted(self.eval_details.items()) if r.accuracy_by_length},
            "eval_reference_logprob_by_step": {str(k): round(r.reference_logprob, 5)
                                               for k, r in sorted(self.eval_details.items())
                                               if r.reference_logprob is not None},
        }


def sampling_seed(run_seed: int, n: int) -> int:
    """The seed of the ``n``-th prompt's group: a function of the run's seed and the prompt's
    place in the stream only, never of which actor takes it or when."""
    return int.from_bytes(hashlib.blake2b(f"{run_seed}:{n}".encode(), digest_size=8).digest()) >> 1


def load_trainer(config: Config, model_path: str, resume: bool, force_config: bool = False):
    """The checkpoint resumed from (or None), model, tokenizer and training engine: the
    same on every rank of a DeepSpeed job."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(config.run.seed)
    resume_from = ckpt.latest(Path(config.run.dir) / "checkpoints") if resume else None
    if resume_from is not None and not force_config:
        check_resumable(ckpt.read_meta(resume_from), config, resume_from)
    # with LoRA the checkpoint's model is merged: the base comes from model.path, the adapters
    # from the checkpoint's trainer state (learner.lora)
    load_from = str(resume_from / "model") if resume_from and not config.learner.lora_rank else model_path
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = None if config.model.dtype == "auto" else getattr(torch, config.model.dtype)
    remote = config.model.trust_remote_code
    tokenizer = use_chat_template_kwargs(AutoTokenizer.from_pretrained(load_from, trust_remote_code=remote),
                                         config.model.chat_template_kwargs)
    assert_shared_vocabulary(tokenizer, AutoTokenizer.from_pretrained(model_path, trust_remote_code=remote))
    model = AutoModelForCausalLM.from_pretrained(load_from, dtype=dtype, trust_remote_code=remote).to(device)
    if config.learner.lora_rank:
        from learner.lora import add_adapters

        model = add_adapters(model, config.learner)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return resume_from, model, tokenizer, make_trainer(model, config, pad)


def check_resumable(meta: ckpt.CheckpointMeta, config: Config, path: Path) -> None:
    """StartupError unless the checkpoint was trained under this run's configuration (its
    hash: method, group size, learning rate… — not steps, ports or paths)."""
    if meta.config_hash == config_hash(config):
        return
    differences = config_differences(meta.config, config) if meta.config else []
    raise StartupError(f"--resume: {path} was trained under another configuration ("
                       + ("; ".join(differences) or f"config hash {meta.config_hash}, now {config_hash(config)}")
                       + "): resume with the run's own config, start a new run dir, or pass --force-config")


def rotate_when_full(path: Path, max_bytes: int) -> None:
    """A log of days stays bounded: ``path`` at ``max_bytes`` or more becomes ``path.1``
    (replacing the one before), and writing starts a new file."""
    if path.exists() and path.stat().st_size >= max_bytes:
        path.replace(path.with_name(path.name + ".1"))


def outcome_signal(batch: list[TaggedGroup]) -> dict[str, float]:
    """Of a batch: the share of responses cut at max_response_tokens, and the share of
    groups whose rewards are all equal (TRL's frac_reward_zero_std: a group-relative
    advantage is 0 there, so only the teacher's credit trains on it)."""
    samples = [s for t in batch for s in t.group.samples]
    return {"truncated_fraction": statistics.fmean(s.finish == "length" for s in samples),
            "zero_std_fraction": statistics.fmean(len({s.reward for s in t.group.samples}) == 1 for t in batch)}


def admission_capacity(config: Config) -> int:
    """Groups the learner lets be in flight: ``learner.admission_groups``, else (η+1)·B —
    what the learner can train before any of them is more than η versions old. A fleet
    larger than capacity / prompts_per_batch finds nothing to take; a larger capacity
    feeds it, and the groups that arrive too late are dropped as stale."""
    lc = config.learner
    return lc.admission_groups or (lc.max_staleness + 1) * lc.batch_groups


def follow(config: Config, model_path: str, resume: bool) -> None:
    """A DeepSpeed rank other than 0: the same engine, driven by rank 0's Learner."""
    load_trainer(config, model_path, resume)[3].follow()


def _histogram_mean(histogram: Any) -> float | None:
    values = {s.name.rsplit("_", 1)[-1]: s.value for s in histogram.collect()[0].samples
              if s.name.endswith(("_sum", "_count"))}
    return round(values["sum"] / values["count"], 4) if values.get("count") else None
