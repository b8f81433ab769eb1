"""Prometheus metrics of each role, one class per role (names listed in the README).

Each class registers its metrics in the registry it is given: a process uses the default
registry (served at /metrics); tests give each instance a fresh ``CollectorRegistry``.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# malformed: dead-lettered (also a group no training sample can be made of); duplicate: a
# group id already buffered or trained; the others: learner.staleness.Drop
DROP_REASONS = ("malformed", "duplicate", "stale", "future", "lost")


class ReplayMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.groups_ingested = Counter(
            "hsd_replay_groups_ingested", "Rollout groups decoded and accepted into the buffer",
            registry=registry)
        self.dropped = Counter(
            "hsd_replay_dropped", "Rollout groups dropped, by reason", ["reason"], registry=registry)
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        self.buffered_groups = Gauge(
            "hsd_replay_buffered_groups", "Groups decoded and waiting for a batch", registry=registry)
        self.peer_coverage = Gauge(
            "hsd_replay_peer_coverage",
            "Fraction of samples in the last batch with a successful peer (group or bank)",
            registry=registry)
        self.queue_lag = Gauge(
            "hsd_queue_lag_entries", "Stream entries undelivered or in progress", ["stream"],
            registry=registry)
        self.batch_staleness = Histogram(
            "hsd_replay_batch_staleness_versions", "v − v_b of the groups handed out in batches",
            buckets=(0, 1, 2, 3, 4, 6, 8, 16), registry=registry)


SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ActorMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.groups = Counter("hsd_actor_groups", "Rollout groups written", registry=registry)
        self.samples = Counter("hsd_actor_samples", "Samples generated", registry=registry)
        self.tokens = Counter("hsd_actor_tokens", "Response tokens generated", registry=registry)
        self.generate_seconds = Histogram(
            "hsd_actor_generate_seconds", "Wall time of one generation batch", buckets=SECONDS,
            registry=registry)
        self.reward = Histogram(
            "hsd_actor_reward", "Verifier reward per sample", buckets=(0, 0.25, 0.5, 0.75, 1.0),
            registry=registry)
        self.policy_version = Gauge(
            "hsd_actor_policy_version", "Version of the weights the actor generates with",
            registry=registry)
        self.weight_sync_seconds = Histogram(
            "hsd_actor_weight_sync_seconds", "Fetch + verify + load of a new weight version",
            buckets=SECONDS, registry=registry)
        self.ready = Gauge("hsd_actor_ready", "1 once weights are loaded and the actor takes prompts",
                           registry=registry)
        self.paused = Gauge(
            "hsd_actor_backpressure_paused", "1 while the actor waits for the rollout stream to drain",
            registry=registry)
        self.rejected_prompts = Counter(
            "hsd_actor_rejected_prompts", "Malformed prompt entries dead-lettered", registry=registry)
        # a verification that ran out of time (timeout) or whose verifier raised (exception):
        # scored 0 either way; a wrong or unparsable answer is not an error
        self.verifier_errors = Counter(
            "hsd_actor_verifier_errors", "Verifications that timed out or raised, scored 0", ["kind"],
            registry=registry)
        for kind in ("timeout", "exception"):
            self.verifier_errors.labels(kind)  # exported at 0 from the start: rates and alerts see them
        self.truncated = Counter(
            "hsd_actor_truncated_samples", "Samples that hit model.max_response_tokens", registry=registry)


class LearnerMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.step = Gauge("hsd_learner_step", "Optimiser steps committed", registry=registry)
        self.policy_version = Gauge("hsd_learner_policy_version", "Current policy version",
                                    registry=registry)
        self.step_seconds = Histogram("hsd_learner_step_seconds", "Wall time of a training step",
                                      buckets=SECONDS, registry=registry)
        self.tokens_per_second = Gauge("hsd_learner_tokens_per_second",
                                       "Response tokens trained per second of step time", registry=registry)
        self.loss = Gauge("hsd_learner_loss", "Loss of the last step", registry=registry)
        self.staleness = Histogram("hsd_learner_staleness_versions", "v − v_b of trained groups",
                                   buckets=(0, 1, 2, 3, 4, 6, 8, 16), registry=registry)
        self.importance_ratio = Histogram(
            "hsd_learner_importance_ratio", "Mean π_θold/μ per step",
            buckets=(0.5, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 4.0), registry=registry)
        self.is_masked_fraction = Gauge("hsd_learner_is_masked_fraction",
                                        "Fraction of tokens whose IS weight is 0", registry=registry)
        self.teacher_kl = Gauge("hsd_learner_teacher_kl", "Sampled KL(π_θ ‖ π_T) on distilled tokens",
                                registry=registry)
        self.idle_fraction = Gauge("hsd_learner_idle_fraction",
                                   "Fraction of wall time spent waiting for batches", registry=registry)
        self.reward = Gauge("hsd_learner_reward_mean", "Mean reward of the last batch", registry=registry)
        self.eval_accuracy = Gauge("hsd_learner_eval_accuracy",
                                   "Held-out accuracy at the last evaluation (eval_every)", registry=registry)
        self.grad_norm = Gauge("hsd_learner_grad_norm", "Gradient norm of the last step, before clipping",
                               registry=registry)
        self.entropy = Gauge("hsd_learner_entropy",
                             "Mean entropy of the policy over the last batch's response tokens (nats)",
                             registry=registry)
        self.learning_rate = Gauge("hsd_learner_learning_rate", "Optimiser learning rate", registry=registry)
        self.response_tokens = Gauge("hsd_learner_response_tokens_mean",
                                     "Mean response length (tokens) of the last batch's samples", registry=registry)
        self.truncated_fraction = Gauge(
            "hsd_learner_truncated_fraction", "Share of the last batch's responses that hit max_response_tokens",
            registry=registry)
        self.zero_std_fraction = Gauge(
            "hsd_learner_zero_std_group_fraction",
            "Share of the last batch's groups whose rewards are all equal (no outcome signal)", registry=registry)
        self.checkpoint_age = Gauge(
            "hsd_learner_checkpoint_age_seconds", "Seconds since the last checkpoint (or the start)",
            registry=registry)
        self.gpu_memory = Gauge("hsd_learner_gpu_memory_bytes", "The learner's CUDA memory (0 on CPU)", ["kind"],
                                registry=registry)
        self.redis_memory = Gauge("hsd_redis_used_memory_bytes", "The run's Redis used_memory (INFO memory)",
                                  registry=registry)


class CreditMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.abs_mean = Gauge("hsd_credit_abs_mean", "Mean |δ_t| over distilled tokens of the last step",
                              registry=registry)
        self.divergence_mass = Histogram(
            "hsd_credit_divergence_mass", "Share of Σ|δ| within w tokens of the divergence (HSD)",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), registry=registry)
        self.peak_offset = Histogram(
            "hsd_credit_peak_offset_tokens", "argmax|δ| − divergence position (HSD)",
            buckets=(-32, -8, -4, -2, -1, 0, 1, 2, 4, 8, 32), registry=registry)
        self.silence_fraction = Gauge("hsd_credit_silence_fraction",
                                      "Fraction of distilled tokens with |δ| < τ", registry=registry)


class WeightsMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.version = Gauge("hsd_weights_version", "Newest published weight version", registry=registry)
        self.publish_seconds = Gauge("hsd_weights_publish_seconds",
                                     "Time to snapshot and hash the last published version",
                                     registry=registry)
        self.bytes_sent = Counter("hsd_weights_bytes_sent", "Weight bytes streamed to actors",
                                  registry=registry)
        seconds = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
        self.publish_blocked_seconds = Histogram(
            "hsd_weights_publish_blocked_seconds",
            "Time the learner loop waits to hand a version to the publisher, per version",
            buckets=seconds, registry=registry)
        self.publish_lag_seconds = Histogram(
            "hsd_weights_publish_lag_seconds",
            "From the learner handing a version over to actors being able to fetch it",
            buckets=seconds, registry=registry)
