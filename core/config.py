"""The run configuration: one TOML file, overridden by environment, then by CLI flags.

Precedence (later wins)::

    defaults  <  TOML file  <  HSD_SECTION__FIELD env vars  <  --set section.field=value

Every section forbids unknown keys, so a typo fails at start instead of being ignored.
Invalid values raise :class:`ConfigError`, whose message names each bad field by its
path (``learner.lr``) with the reason.

:func:`config_hash` fingerprints what every process of a run must agree on. Fields
marked ``LOCAL`` (ports, addresses, secrets, file paths of one process, how many steps it
runs) are left out, so two actors on different metrics ports still join the same run and
a learner resumed with another ``--steps`` resumes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from string import Formatter
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from core.method_registry import MethodName
from core.tasks import check_task_name

ENV_PREFIX = "HSD_"
LOCAL = {"local": True}  # marks a field that is per-process and not part of the run's hash
MiB = 1 << 20
# what `hsd run` uses without --config: the embedded default job
EMBEDDED_CONFIG = Path(__file__).with_name("embedded.toml")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field path and the reason."""


class _Section(BaseModel):
    # each field's docstring is its description: `hsd config --fields` prints them
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


# a GPU id as CUDA_VISIBLE_DEVICES writes it: an ordinal (0, "1") or a UUID
DeviceId = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v)]


class RunConfig(_Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] = "hsd"
    """the run's name: its Redis keys are hsd:{name}:…, and actors join it by this name"""
    seed: int = 0
    """seed of the learner's RNGs and of the prompt stream"""
    dir: Annotated[str, Field(json_schema_extra=LOCAL)] = "runs/hsd"
    """the run dir: config, logs, checkpoints, metrics.jsonl, credit.jsonl, summary"""
    # how long this process trains: a resumed learner or a joining actor may say otherwise
    steps: Annotated[int, Field(ge=1, json_schema_extra=LOCAL)] = 40
    """optimiser steps to train (this process's; not part of the run's identity)"""
    learner_devices: Annotated[list[DeviceId] | None, Field(json_schema_extra=LOCAL)] = None
    """GPUs `hsd run` gives the learner (one a rank, ids as CUDA_VISIBLE_DEVICES); unset: the first"""
    actor_devices: Annotated[list[DeviceId] | None, Field(json_schema_extra=LOCAL)] = None
    """GPUs `hsd run`'s actors go round-robin over; unset: those the learner leaves, or all if none"""
    learner_gpu_share: Annotated[float, Field(gt=0, lt=1, json_schema_extra=LOCAL)] = 0.5
    """on a GPU the learner shares with vLLM actors, the memory share kept for the learner"""


class RedisConfig(_Section):
    # None: start the embedded server; else redis:// or rediss:// as is.
    url: Annotated[str | None, Field(json_schema_extra=LOCAL)] = None
    """an existing Redis (redis://, rediss://, unix://; password in the URL); unset: start the embedded one"""
    data_dir: Annotated[str | None, Field(json_schema_extra=LOCAL)] = None
    """the embedded Redis's data dir (default RUN_DIR/redis)"""
    retry_seconds: Annotated[float, Field(ge=0)] = 30.0
    """how long a Redis command is retried (backoff, jitter) before the process fails"""
    block_ms: Annotated[int, Field(ge=1)] = 1000
    """how long a stream read blocks waiting for entries"""
    claim_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    """a prompt or rollout unacknowledged this long is reclaimed from a dead consumer"""
    max_record_bytes: Annotated[int, Field(ge=1024)] = 64 * MiB
    """a rollout or prompt record over this size is dead-lettered"""
    max_rollout_lag: Annotated[int, Field(ge=1)] = 256
    """actors stop taking prompts while this many rollout groups wait unread (backpressure)"""

    @model_validator(mode="after")
    def _url_scheme(self) -> RedisConfig:
        if self.url is not None and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("url must start with redis://, rediss:// or unix://")
        return self


class ModelConfig(_Section):
    # "tiny": the shipped tiny Qwen3 (table chain); "tiny-arith": the same architecture
    # warm-started on arith (built once, cached); else an HF folder or hub id.
    path: str = "tiny"
    """'tiny' (the shipped table-chain model), 'tiny-seed2', 'tiny-chain-any', 'tiny-chain-any-seed2' (the any-order chain's), 'tiny-chain-exclusion', 'tiny-arith', an HF folder or a hub id"""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    """parameter dtype (bf16/fp16 train with float32 master weights, learner.master_weights)"""
    max_prompt_tokens: Annotated[int, Field(ge=1)] = 256
    """prompts rendering to more tokens are dead-lettered (too_long)"""
    max_response_tokens: Annotated[int, Field(ge=1)] = 64
    """generation length cap; longer responses in a record are dead-lettered"""
    trust_remote_code: bool = False
    """let transformers run a model repository's own code"""
    chat_template_kwargs: dict[str, str | int | float | bool] = {}
    """arguments the chat template reads, for every prompt of every role (Qwen3: {enable_thinking = false})"""


class ActorConfig(_Section):
    engine: Literal["hf", "vllm"] = "hf"
    """generation engine: hf (transformers) or vllm"""
    task: Annotated[str, AfterValidator(check_task_name)] = "arith"
    """chain, chain-any, chain-exclusion, arith, gsm8k, humaneval, math, math:FILE.jsonl, code or gym:NAME"""
    group_size: Annotated[int, Field(ge=1, le=1024)] = 8
    """G: samples per prompt (a group; HSD's peers come from it)"""
    temperature: Annotated[float, Field(gt=0)] = 1.0
    """sampling temperature"""
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    """nucleus sampling threshold"""
    prompts_per_batch: Annotated[int, Field(ge=1)] = 1
    """prompts an actor generates for in one engine call"""
    verifier_workers: Annotated[int, Field(ge=1)] = 2
    """threads scoring completions in parallel"""
    verifier_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    """wall-time limit of one verification (sandboxed code included)"""
    vllm_gpu_memory_utilization: Annotated[float, Field(gt=0, le=1, json_schema_extra=LOCAL)] = 0.9
    """share of the GPU's memory vLLM may take (weights + KV cache); `hsd run` splits it on a shared GPU"""
    vllm_max_model_len: Annotated[int, Field(ge=16)] = 2048
    """longest sequence vLLM plans its KV cache for: ≥ prompt + response (srt: + the attempt)"""
    allow_unsandboxed_code: bool = False
    """run generated code without isolation when no sandbox backend exists"""


class LearnerConfig(_Section):
    engine: Literal["torch", "deepspeed"] = "torch"
    """training engine: torch, or deepspeed (ZeRO-2/3 across processes)"""
    zero_stage: Literal[2, 3] = 2
    """DeepSpeed ZeRO stage"""
    processes: Annotated[int, Field(ge=1)] = 1
    """ranks `hsd run` starts under torchrun (engine deepspeed)"""
    batch_groups: Annotated[int, Field(ge=1)] = 4
    """B: groups per optimiser step (samples per step = B × G)"""
    max_staleness: Annotated[int, Field(ge=0)] = 1
    """η: groups sampled more than η versions ago are dropped (stale)"""
    admission_groups: Annotated[int | None, Field(ge=1)] = None
    """groups in flight at once (prompts + rollouts); unset: (η+1)·B. N actors need ≥ N × prompts_per_batch"""
    lr: Annotated[float, Field(gt=0, le=1)] = 1e-5
    """AdamW's peak learning rate (lr_schedule shapes it over the steps)"""
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """after the warmup: constant, or a linear or cosine decay to 0 at schedule_steps"""
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    """optimiser steps of linear warmup from lr/warmup_steps to lr"""
    schedule_steps: Annotated[int | None, Field(ge=1)] = None
    """the step where a decay reaches 0; unset: run.steps (set it when a resumed run changes --steps)"""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """AdamW weight decay"""
    grad_clip: Annotated[float, Field(gt=0)] = 1.0
    """the global gradient norm is clipped to this before each optimiser step"""
    lora_rank: Annotated[int, Field(ge=0)] = 0
    """LoRA adapters of this rank train in place of the full weights (learner.lora; published merged); 0: full fine-tuning"""
    lora_alpha: Annotated[float, Field(gt=0)] = 16.0
    """LoRA's α: the adapters' update is (α / lora_rank)·B·A"""
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """dropout on the adapters' input while training"""
    lora_target_modules: str = "all-linear"
    """the layers that get adapters: all-linear (every linear layer but the output head) or module names, comma-separated (q_proj,v_proj)"""
    epochs: Annotated[int, Field(ge=1)] = 1
    """optimiser passes over each batch (the PPO clip applies from the second)"""
    microbatch_tokens: Annotated[int, Field(ge=1)] = 8192
    """padded tokens per forward/backward micro-batch"""
    # response positions whose vocabulary-wide logits exist at once (learner.logprobs)
    head_chunk_tokens: Annotated[int, Field(ge=1)] = 1024
    """response positions whose vocabulary-wide logits exist at once"""
    # bf16/fp16 parameters (model.dtype) train with float32 master weights and AdamW states
    master_weights: bool = True
    """bf16/fp16 parameters train with float32 master weights and AdamW states"""
    # keep only each layer's input for the backward pass and recompute the rest (less
    # memory, about a third more compute)
    activation_checkpointing: bool = False
    """recompute each layer in the backward pass (less memory, ~1/3 more compute)"""
    # worth it with flash_attention_2 (variable-length kernels); under sdpa the block-
    # diagonal mask is quadratic in the packed row (slower than padding on CPU)
    packing: bool = False
    """pack each micro-batch into one row (position ids restart per sequence) instead of padding"""
    # the backbone through torch.compile (dynamic shapes) for the passes without a KV cache:
    # fewer, fused elementwise kernels; the first steps pay for the compilation
    compile: bool = False
    """torch.compile the backbone for the cache-free passes (engine torch, head route)"""
    checkpoint_every: Annotated[int, Field(ge=0)] = 20
    """steps between checkpoints (rollouts are acknowledged with them); 0: none"""
    keep_checkpoints: Annotated[int, Field(ge=1, json_schema_extra=LOCAL)] = 3
    """checkpoints kept in RUN_DIR/checkpoints (the oldest go first; each holds weights + optimiser)"""
    credit_log_every: Annotated[int, Field(ge=0)] = 5
    """steps between credit.jsonl records (δ_t per token of each sample); 0: none"""
    credit_log_max_mb: Annotated[float, Field(gt=0, json_schema_extra=LOCAL)] = 256.0
    """credit.jsonl past this size becomes credit.jsonl.1 (the one before is dropped): at most twice it on disk"""
    eval_every: Annotated[int, Field(ge=0)] = 0
    """held-out accuracy every N steps, before the first and after the last; 0: off"""
    eval_problems: Annotated[int, Field(ge=1)] = 64
    """fixed problems of the task's test split per evaluation"""
    eval_samples: Annotated[int, Field(ge=1)] = 4
    """samples per held-out problem, at the actors' temperature"""

    @model_validator(mode="after")
    def _engine_is_usable(self) -> LearnerConfig:
        import importlib.util

        if self.lora_rank:
            if self.engine != "torch":
                raise ValueError("lora_rank > 0 needs engine 'torch' (DeepSpeed's engine wraps the model)")
            if importlib.util.find_spec("peft") is None:
                raise ValueError("lora_rank > 0 needs the peft package: pip install 'hsd[lora]'")
        if self.engine != "deepspeed":
            if self.processes > 1:
                raise ValueError("processes > 1 needs engine 'deepspeed'")
            return self
        if self.compile:
            raise ValueError("compile is built for engine 'torch' (DeepSpeed's engine wraps the model)")
        if importlib.util.find_spec("deepspeed") is None:
            raise ValueError("engine 'deepspeed' needs the deepspeed package: pip install --no-build-isolation "
                             "deepspeed (scripts/setup-venv does)")
        if self.zero_stage == 3 and self.eval_every:
            # held-out evaluation generates on rank 0 alone, which ZeRO-3's sharded weights don't allow
            raise ValueError("eval_every must be 0 with engine 'deepspeed' and zero_stage 3")
        return self


class AlgorithmConfig(_Section):
    # core.method_registry: one module each in methods/ (their defaults and checks: methods.configure)
    method: MethodName = "hsd"
    """grpo, hsd, opsd, sdzero, srt or rft (core.method_registry; one module each in methods/; its defaults: the module's Method.defaults)"""
    advantage: Literal["grpo", "dr_grpo", "none"] = "grpo"
    """outcome advantage A_i: grpo ((r − mean)/std), dr_grpo (r − mean) or none"""
    loss: Literal["sampled", "topk"] = "sampled"
    """sampled: A_t = A_i + λ·δ_t on the sampled token; topk: A_i plus λ × the top-k mixed KL"""
    credit_coef: Annotated[float, Field(ge=0)] = 1.0
    """λ: weight of the teacher's credit (both losses)"""
    topk: Annotated[int, Field(ge=1)] = 64
    """k of the top-k loss (the teacher's k largest logits)"""
    topk_alpha: Annotated[float, Field(ge=0, le=1)] = 0.5
    """α of the top-k mixed KL: α·forward + (1 − α)·reverse"""
    normalization: Literal["token_mean", "sequence_mean", "constant_length"] = "token_mean"
    """how the token terms are averaged: token_mean, sequence_mean or constant_length"""
    constant_length: Annotated[int | None, Field(ge=1)] = None
    """constant_length's L (dr_grpo); unset: model.max_response_tokens"""
    peer_strategy: Literal["random", "shortest"] = "random"
    """which successful peer a sample is scored against: random or shortest"""
    peer_fallback: Literal["answer", "none", "bank"] = "answer"
    """a sample without an in-group success: answer (OPSD's view), none, or bank (an earlier success)"""
    peer_with_answer: bool = False
    """HSD's teacher also reads the reference answer (the HSD paper's context)"""
    # which samples get a teacher view; each method's paper sets it (methods.configure): HSD
    # re-scores failed attempts, OPSD and SD-Zero every sample
    distill: Literal["failed", "all"] = "all"
    """which samples the teacher re-scores: failed or all (the method's default: Method.defaults)"""
    # what stands in HSD's context for the in-group peer: the ablations that tell hindsight
    # from a target (docs/method-comparison.md)
    peer_source: Literal["group", "placebo", "reference"] = "group"
    """HSD's peer: group (a success of the same group), placebo (another prompt's) or reference"""
    kl_coef: Annotated[float, Field(ge=0)] = 0.0
    """β: sampled reverse-KL penalty to the initial weights (or kl_reference) in the advantage (0: none)"""
    kl_reference: str | None = None
    """the model kl_coef pulls towards (a model folder, hub id or shipped name; same vocabulary); unset: the initial weights"""
    # srt: also revise right attempts (their revisions train stage 2 only; off: the reference's
    # default, REVISE_CORRECT=0)
    srt_revise_correct: bool = False
    """srt also revises right attempts (their revisions train stage 2 only)"""
    # the teacher's and the reviser's wording (methods.templates): a model trained or prompted
    # in another language or format needs its own
    peer_template: str = "\n\nHere is a correct solution to this problem:\n{peer}"
    """HSD: what follows the prompt in the teacher's context; {peer} is the successful peer"""
    answer_template: str = "\n\nThe reference answer is: {answer}"
    """OPSD (and HSD with peer_with_answer): the reference answer in the teacher's context"""
    teacher_closing: str = "\n\nNow write a solution of your own."
    """the end of the teacher's added context, before the student's response"""
    revision_right: str = "Let me rephrase the above solution."
    """SD-Zero/srt: what follows a right attempt in the reviser's context"""
    revision_wrong: str = "Wait, this response is wrong. Let me correct it."
    """SD-Zero/srt: what follows a wrong attempt in the reviser's context"""
    peer_bank_size: Annotated[int, Field(ge=1)] = 4
    """banked successes kept per prompt (peer_fallback bank)"""
    peer_bank_max_age: Annotated[int, Field(ge=0)] = 4
    """versions a banked success stays usable"""
    teacher: Literal["current", "ema", "sync", "frozen"] = "current"
    """the teacher's weights: current, ema, sync (copied every teacher_sync_every steps) or frozen"""
    teacher_ema_decay: Annotated[float, Field(gt=0, lt=1)] = 0.99
    """decay of the ema teacher"""
    teacher_sync_every: Annotated[int, Field(ge=1)] = 10
    """steps between copies of the sync teacher"""
    is_mode: Literal["token_truncate", "token_mask", "sequence_mask", "none"] = "token_truncate"
    """behaviour-policy correction: token_truncate, token_mask, sequence_mask or none"""
    is_rho_max: Annotated[float, Field(gt=0)] = 2.0
    """upper band of the importance ratio ρ = π_θold/μ"""
    is_rho_min: Annotated[float, Field(ge=0)] = 0.5
    """lower band of ρ (the mask modes)"""
    ppo_clip_low: Annotated[float, Field(ge=0, lt=1)] = 0.2
    """PPO clip below 1 (epochs > 1)"""
    ppo_clip_high: Annotated[float, Field(ge=0)] = 0.28
    """PPO clip above 1 (epochs > 1)"""
    divergence_window: Annotated[int, Field(ge=0)] = 4
    """tokens either side of the divergence counted as its credit mass"""
    silence_tau: Annotated[float, Field(gt=0)] = 0.05
    """|δ| below this counts as silent"""

    @model_validator(mode="after")
    def _templates_have_their_field(self) -> AlgorithmConfig:
        for name, field in (("peer_template", "peer"), ("answer_template", "answer")):
            template = getattr(self, name)
            try:
                fields = {f for _, f, _, _ in Formatter().parse(template) if f is not None}
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
            if fields != {field}:
                raise ValueError(f"{name}: must hold {{{field}}} and no other field (it has {sorted(fields)})")
        return self

    @model_validator(mode="after")
    def _bands(self) -> AlgorithmConfig:
        if self.kl_reference is not None and self.kl_coef == 0:
            raise ValueError("kl_reference is set but kl_coef is 0: the reference would pull with weight 0")
        if self.is_rho_min >= self.is_rho_max:
            raise ValueError(
                f"is_rho_min ({self.is_rho_min}) must be below is_rho_max ({self.is_rho_max})"
            )
        return self


class WeightsConfig(_Section):
    host: Annotated[str, Field(json_schema_extra=LOCAL)] = "127.0.0.1"
    """the weight service's listen address"""
    port: Annotated[int, Field(ge=0, le=65535, json_schema_extra=LOCAL)] = 0
    """its gRPC port (0: a free one)"""
    # the address actors dial (e.g. a Kubernetes Service "hsd-learner:50051"); None: host:port
    advertise: Annotated[str | None, Field(json_schema_extra=LOCAL)] = None
    """the address actors dial (e.g. a Kubernetes Service); unset: host:port"""
    token: Annotated[str | None, Field(json_schema_extra=LOCAL)] = None
    """bearer token every weight-service call must carry"""
    tls_cert: Annotated[str | None, Field(json_schema_extra=LOCAL)] = None
    """TLS certificate of the weight service (with tls_key)"""
    tls_key: Annotated[str | None, Field(json_schema_extra=LOCAL)] = None
    """TLS key of the weight service"""
    tls_ca: Annotated[str | None, Field(json_schema_extra=LOCAL)] = None
    """CA actors verify the weight service with"""
    # the bulk channel: snapshot bytes over a plain socket (TLS with the service's) beside
    # gRPC, which stays the fallback; bulk_port 0: a free port
    bulk: Annotated[bool, Field(json_schema_extra=LOCAL)] = True
    """serve snapshot bytes over the bulk channel beside gRPC"""
    bulk_port: Annotated[int, Field(ge=0, le=65535, json_schema_extra=LOCAL)] = 0
    """the bulk channel's port (0: a free one)"""
    keep_versions: Annotated[int, Field(ge=1)] = 3
    """weight versions the service keeps"""
    # Watch streams served at once (a thread each, beside the pool for GetLatest/Fetch): ≥ actors
    max_watchers: Annotated[int, Field(ge=1)] = 256
    """Watch streams served at once (a thread each, beside GetLatest/Fetch's); ≥ actors"""
    chunk_bytes: Annotated[int, Field(ge=4096, le=4 * MiB)] = 4 * MiB
    """size of a Fetch chunk"""

    @model_validator(mode="after")
    def _tls_pair(self) -> WeightsConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        return self


class DataConfig(_Section):
    # read with actor.task = "data" (core.tasks.data); checked when the config is read
    train: str | None = None
    """your training problems: a .jsonl/.json/.csv/.parquet file, a datasets save_to_disk folder or hf:OWNER/NAME"""
    eval: str | None = None
    """held-out problems in the same forms; unset: eval_fraction of train is held out"""
    subset: str | None = None
    """the hub dataset's configuration name (load_dataset's second argument, e.g. "main")"""
    train_split: str = "train"
    """the split of train where it has several (a DatasetDict folder or a hub dataset)"""
    eval_split: str = "test"
    """the split of eval where it has several"""
    eval_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    """share of train held out (a fixed draw) when eval is unset; 0: none"""
    id_field: str | None = "id"
    """a row's stable id (the peer bank's key); rows without it are numbered"""
    prompt_field: str = "prompt"
    """the row field holding the prompt: a string, or chat messages ({role, content} objects)"""
    answer_field: str = "answer"
    """the row field holding the reference answer"""
    answer_pattern: str | None = None
    """a regex whose first group is the answer within answer_field (GSM8K: "####\\s*(.+)$")"""
    solution_field: str | None = "solution"
    """the row field holding a reference solution, where rows have one"""
    prompt_template: str = "{prompt}"
    """the prompt the policy sees: {prompt} and any {field} of the row (a string prompt field)"""
    reward: str = "math"
    """math (math-verify), code (tests in the sandbox), final-answer (#### integer) or MODULE:FUNCTION"""
    reward_sandboxed: bool = False
    """run the MODULE:FUNCTION reward in the generated-code sandbox (a stdlib-only single file)"""
    success_reward: float = 1.0
    """a plug-in's numeric reward at or above this is a success (HSD's peers)"""

    @model_validator(mode="after")
    def _sources_are_readable(self) -> DataConfig:
        from core.tasks.data import check_source

        check_source(self)
        return self


class MetricsConfig(_Section):
    enabled: Annotated[bool, Field(json_schema_extra=LOCAL)] = True
    """serve /metrics and /healthz"""
    host: Annotated[str, Field(json_schema_extra=LOCAL)] = "127.0.0.1"
    """their listen address"""
    port: Annotated[int, Field(ge=0, le=65535, json_schema_extra=LOCAL)] = 0
    """their port (0: a free one)"""
    tensorboard: Annotated[bool, Field(json_schema_extra=LOCAL)] = True
    """the learner writes every per-step metric as TensorBoard event files in RUN_DIR/tensorboard"""
    wandb_project: Annotated[str | None, Field(json_schema_extra=LOCAL)] = None
    """also log them to this Weights & Biases project (needs `pip install wandb`); unset: no W&B"""
    wandb_mode: Annotated[Literal["online", "offline"], Field(json_schema_extra=LOCAL)] = "online"
    """offline: W&B writes RUN_DIR/wandb only (`wandb sync` uploads it later); no network needed"""


class Config(_Section):
    run: RunConfig = RunConfig()
    redis: RedisConfig = RedisConfig()
    model: ModelConfig = ModelConfig()
    actor: ActorConfig = ActorConfig()
    learner: LearnerConfig = LearnerConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    weights: WeightsConfig = WeightsConfig()
    metrics: MetricsConfig = MetricsConfig()
    data: DataConfig = DataConfig()

    @model_validator(mode="after")
    def _data_is_read(self) -> Config:
        if (self.actor.task == "data") != (self.data.train is not None):
            raise ValueError("data.train: unset, and actor.task = 'data' reads its problems from it"
                             if self.data.train is None else
                             f"data.train: set, but actor.task is {self.actor.task!r}: set actor.task = 'data'")
        return self


SECTIONS = tuple(Config.model_fields)


def _set_path(tree: dict[str, Any], path: str, text: str, origin: str) -> None:
    parts = path.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{origin}: {path!r} is not of the form section.field")
    section, field = parts
    if section not in SECTIONS:
        raise ConfigError(f"{origin}: unknown section {section!r} (sections: {', '.join(SECTIONS)})")
    tree.setdefault(section, {})[field] = _parse_value(section, field, text)


def _is_string_field(section: str, field: str) -> bool:
    info = Config.model_fields[section].annotation.model_fields.get(field)
    if info is None:
        return False  # unknown: validation names it
    return [a for a in get_args(info.annotation) if a is not type(None)] == [str] or info.annotation is str


def _parse_value(section: str, field: str, text: str) -> Any:
    """A flag or env value: a TOML literal when it is one (1e-5, true, "x"), else the
    string; a string field keeps the text of an unquoted number or boolean (run.name=2024)."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    return text if not isinstance(value, str) and _is_string_field(section, field) else value


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``HSD_LEARNER__LR=1e-5`` -> ``{"learner": {"lr": 1e-05}}``; ``HSD_LEARNER_LR`` (one
    underscore after a section's name) is an error rather than silently ignored; other HSD_
    vars (HSD_CACHE) are not config."""
    tree: dict[str, Any] = {}
    for key, text in environ.items():
        rest = key[len(ENV_PREFIX):].lower()
        if key.startswith(ENV_PREFIX) and "__" not in key and rest.startswith(tuple(f"{s}_" for s in SECTIONS)):
            section = next(s for s in SECTIONS if rest.startswith(f"{s}_"))
            raise ConfigError(f"environment variable {key}: a section and its field are separated by two "
                              f"underscores (HSD_{section.upper()}__{rest[len(section) + 1:].upper()})")
        if key.startswith(ENV_PREFIX) and "__" in key:
            path = key[len(ENV_PREFIX) :].lower().replace("__", ".", 1)
            _set_path(tree, path, text, f"environment variable {key}")
    return tree


def flag_overrides(assignments: Iterable[str]) -> dict[str, Any]:
    """``["learner.lr=1e-5"]`` -> ``{"learner": {"lr": 1e-05}}``."""
    tree: dict[str, Any] = {}
    for item in assignments:
        path, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected section.field=value")
        _set_path(tree, path.strip(), text.strip(), f"--set {item!r}")
    return tree


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        got = "" if e["type"] == "missing" else f" (got {e['input']!r})"
        if isinstance(e.get("input"), Mapping):
            got = ""
        message = e["msg"].removeprefix("Value error, ")
        own_prefix = "" if path == "<root>" else f"{path}."
        if isinstance(e.get("input"), Mapping) and message.startswith(own_prefix):
            lines.append(f"  {message}")  # a section's own check, whose message names the field
        else:
            lines.append(f"  {path}: {message}{got}")
    return "invalid configuration:\n" + "\n".join(lines)


def validate(tree: Mapping[str, Any]) -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Iterable[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> Config:
    """Resolve defaults < TOML file < environment < ``overrides`` (``section.field=value``).

    ``extra`` is a tree of already-typed values from dedicated CLI flags (``--steps``);
    it wins over everything else.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            tree = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from None
        unknown = set(tree) - set(SECTIONS)
        if unknown:
            raise ConfigError(
                f"config file {str(path)!r}: unknown section(s) {sorted(unknown)} "
                f"(sections: {', '.join(SECTIONS)})"
            )
    tree = _merge(tree, env_overrides(os.environ if environ is None else environ))
    tree = _merge(tree, flag_overrides(overrides))
    if extra:
        tree = _merge(tree, extra)
    return validate(tree)


def shared_view(model: BaseModel, changed_only: bool = False) -> dict[str, Any]:
    """Every non-LOCAL field (or every one off its default), nested by section: what
    :func:`config_hash` fingerprints."""
    return _shared_view(model, changed_only)


def config_differences(recorded: Mapping[str, Any], config: Config) -> list[str]:
    """``section.field: recorded → now`` for each shared field that differs."""
    now = _shared_view(config)
    return [f"{section}.{key}: {value!r} → {now.get(section, {}).get(key)!r}"
            for section, fields in recorded.items() for key, value in fields.items()
            if now.get(section, {}).get(key) != value]


def _shared_view(model: BaseModel, changed_only: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get("local"):
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            value = _shared_view(value, changed_only)
            if changed_only and not value:
                continue
        elif changed_only and value == field.get_default(call_default_factory=True):
            continue
        out[name] = value
    return out


def config_hash(config: Config, changed_only: bool = False) -> str:
    """sha256 (hex, 16 chars) of the canonical JSON of every non-LOCAL field, or with
    ``changed_only`` of those that differ from their defaults: a fingerprint that a field
    added later with a default does not change (what a ledger of hours of runs keys on)."""
    canonical = json.dumps(_shared_view(config, changed_only), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def fields_table() -> list[tuple[str, str, str, str]]:
    """(section.field, type, default, meaning) of every field, for ``hsd config --fields``."""
    rows = []
    for section, section_field in Config.model_fields.items():
        for name, f in section_field.annotation.model_fields.items():
            default = "unset" if f.default is None else json.dumps(f.default)
            rows.append((f"{section}.{name}", _type_name(f.annotation), default, f.description or ""))
    return rows


def _type_name(annotation: Any) -> str:
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return "|".join(str(a) for a in get_args(annotation))
    if get_origin(annotation) in (list, dict):
        return get_origin(annotation).__name__
    if len(args) == 1:  # X | None
        return _type_name(args[0])
    return getattr(annotation, "__name__", str(annotation))


def masked_url(url: str) -> str:
    """The URL with its password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def shown(config: Config, mask_secrets: bool = True) -> dict[str, dict[str, Any]]:
    """The resolved config as plain data, section by section; with ``mask_secrets`` the
    weights token and a password in the Redis URL are masked (what logs, ``hsd config``
    and an experiment tracker may see)."""
    out: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        values = getattr(config, section).model_dump()
        if mask_secrets and values.get("token") is not None:
            values["token"] = "***"
        if mask_secrets and values.get("url") is not None:
            values["url"] = masked_url(values["url"])
        out[section] = values
    return out


def _toml_value(value: Any) -> str:
    """A TOML literal: JSON's for strings, numbers, booleans and lists (the same syntax),
    an inline table for a mapping."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def to_toml(config: Config, mask_secrets: bool = True) -> str:
    """The resolved config as TOML, for logs and ``hsd config`` (secrets masked) or for the
    processes of a run to read (``mask_secrets=False``; such a file is written with mode 0600)."""
    lines: list[str] = []
    for section, values in shown(config, mask_secrets).items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"# {key} unset" if value is None else f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)
