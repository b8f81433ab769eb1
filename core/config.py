"""The run configuration: one TOML file, overridden by environment, then by CLI flags.

Precedence (later wins)::

    defaults  <  TOML file  <  HSD_SECTION__FIELD env vars  <  --set section.field=value

Every section forbids unknown keys, so a typo fails at start instead of being ignored.
Invalid values raise :class:`ConfigError`, whose message names each bad field by its
path (``learner.lr``) with the reason.

:func:`config_hash` fingerprints what every process of a run must agree on. Fields
marked ``LOCAL`` (ports, addresses, secrets, file paths of one process) are left out,
so two actors on different metrics ports still join the same run.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ENV_PREFIX = "HSD_"
LOCAL = {"local": True}  # marks a field that is per-process and not part of the run's hash
MiB = 1 << 20
# what `hsd run` uses without --config: the embedded default job
EMBEDDED_CONFIG = Path(__file__).with_name("embedded.toml")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field path and the reason."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] = "hsd"
    seed: int = 0
    dir: Annotated[str, Field(json_schema_extra=LOCAL)] = "runs/hsd"
    steps: Annotated[int, Field(ge=1)] = 40


class RedisConfig(_Section):
    # None: start the embedded server; else redis:// or rediss:// as is.
    url: Annotated[str | None, Field(json_schema_extra=LOCAL)] = None
    data_dir: Annotated[str | None, Field(json_schema_extra=LOCAL)] = None
    retry_seconds: Annotated[float, Field(ge=0)] = 30.0
    block_ms: Annotated[int, Field(ge=1)] = 1000
    claim_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    max_record_bytes: Annotated[int, Field(ge=1024)] = 64 * MiB
    max_rollout_lag: Annotated[int, Field(ge=1)] = 256

    @model_validator(mode="after")
    def _url_scheme(self) -> RedisConfig:
        if self.url is not None and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("url must start with redis://, rediss:// or unix://")
        return self


class ModelConfig(_Section):
    # "tiny": the shipped tiny Qwen3 (table chain); "tiny-arith": the same architecture
    # warm-started on arith (built once, cached); else an HF folder or hub id.
    path: str = "tiny"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    max_prompt_tokens: Annotated[int, Field(ge=1)] = 256
    max_response_tokens: Annotated[int, Field(ge=1)] = 64
    trust_remote_code: bool = False


class ActorConfig(_Section):
    engine: Literal["hf", "vllm"] = "hf"
    task: str = "arith"
    group_size: Annotated[int, Field(ge=1, le=1024)] = 8
    temperature: Annotated[float, Field(gt=0)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    prompts_per_batch: Annotated[int, Field(ge=1)] = 1
    verifier_workers: Annotated[int, Field(ge=1)] = 2
    verifier_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    allow_unsandboxed_code: bool = False  # run generated code without isolation if none exists


class LearnerConfig(_Section):
    engine: Literal["torch", "deepspeed"] = "torch"
    zero_stage: Literal[2, 3] = 2
    processes: Annotated[int, Field(ge=1)] = 1  # ranks `hsd run` starts under torchrun (engine deepspeed)
    batch_groups: Annotated[int, Field(ge=1)] = 4
    max_staleness: Annotated[int, Field(ge=0)] = 1  # η: groups older than η versions drop
    lr: Annotated[float, Field(gt=0, le=1)] = 1e-5
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    grad_clip: Annotated[float, Field(gt=0)] = 1.0
    epochs: Annotated[int, Field(ge=1)] = 1  # optimiser epochs per batch (PPO clip when > 1)
    microbatch_tokens: Annotated[int, Field(ge=1)] = 8192
    # response positions whose vocabulary-wide logits exist at once (learner.logprobs)
    head_chunk_tokens: Annotated[int, Field(ge=1)] = 1024
    # bf16/fp16 parameters (model.dtype) train with float32 master weights and AdamW states
    master_weights: bool = True
    # keep only each layer's input for the backward pass and recompute the rest (less
    # memory, about a third more compute)
    activation_checkpointing: bool = False
    checkpoint_every: Annotated[int, Field(ge=0)] = 20
    credit_log_every: Annotated[int, Field(ge=0)] = 5
    eval_every: Annotated[int, Field(ge=0)] = 0  # held-out accuracy every N steps (and at 0 and the end); 0: off
    eval_problems: Annotated[int, Field(ge=1)] = 64  # fixed problems of the task's test split
    eval_samples: Annotated[int, Field(ge=1)] = 4  # per problem, at the actors' temperature

    @model_validator(mode="after")
    def _engine_is_usable(self) -> LearnerConfig:
        if self.engine != "deepspeed":
            if self.processes > 1:
                raise ValueError("processes > 1 needs engine 'deepspeed'")
            return self
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ValueError("engine 'deepspeed' needs the deepspeed package: pip install --no-build-isolation "
                             "deepspeed (scripts/setup-venv does)")
        if self.zero_stage == 3 and self.eval_every:
            # held-out evaluation generates on rank 0 alone, which ZeRO-3's sharded weights don't allow
            raise ValueError("eval_every must be 0 with engine 'deepspeed' and zero_stage 3")
        return self


class AlgorithmConfig(_Section):
    # one module each in methods/ (their own checks: methods.check_config)
    method: Literal["grpo", "hsd", "sdzero", "opsd", "srt"] = "hsd"
    advantage: Literal["grpo", "dr_grpo", "none"] = "grpo"
    loss: Literal["sampled", "topk"] = "sampled"
    credit_coef: Annotated[float, Field(ge=0)] = 1.0  # λ in A_t = A_i + λ·δ_t
    topk: Annotated[int, Field(ge=1)] = 64
    topk_alpha: Annotated[float, Field(ge=0, le=1)] = 0.5
    normalization: Literal["token_mean", "sequence_mean", "constant_length"] = "token_mean"
    constant_length: Annotated[int | None, Field(ge=1)] = None  # dr_grpo's L; None: max_response_tokens
    peer_strategy: Literal["random", "shortest"] = "random"
    peer_fallback: Literal["answer", "none", "bank"] = "answer"
    peer_with_answer: bool = False
    # HSD: also distil successful samples toward another successful peer (off: the paper's
    # setting, where the teacher re-scores failed attempts)
    hsd_distill_successes: bool = False
    peer_bank_size: Annotated[int, Field(ge=1)] = 4  # banked successes kept per prompt
    peer_bank_max_age: Annotated[int, Field(ge=0)] = 4  # versions a banked peer stays usable
    teacher: Literal["current", "ema", "sync", "frozen"] = "current"
    teacher_ema_decay: Annotated[float, Field(gt=0, lt=1)] = 0.99
    teacher_sync_every: Annotated[int, Field(ge=1)] = 10
    is_mode: Literal["token_truncate", "token_mask", "sequence_mask", "none"] = "token_truncate"
    is_rho_max: Annotated[float, Field(gt=0)] = 2.0
    is_rho_min: Annotated[float, Field(ge=0)] = 0.5
    ppo_clip_low: Annotated[float, Field(ge=0, lt=1)] = 0.2
    ppo_clip_high: Annotated[float, Field(ge=0)] = 0.28
    divergence_window: Annotated[int, Field(ge=0)] = 4
    silence_tau: Annotated[float, Field(gt=0)] = 0.05

    @model_validator(mode="after")
    def _bands(self) -> AlgorithmConfig:
        if self.is_rho_min >= self.is_rho_max:
            raise ValueError(
                f"is_rho_min ({self.is_rho_min}) must be below is_rho_max ({self.is_rho_max})"
            )
        return self


class WeightsConfig(_Section):
    host: Annotated[str, Field(json_schema_extra=LOCAL)] = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535, json_schema_extra=LOCAL)] = 0  # 0: a free port
    # the address actors dial (e.g. a Kubernetes Service "hsd-learner:50051"); None: host:port
    advertise: Annotated[str | None, Field(json_schema_extra=LOCAL)] = None
    token: Annotated[str | None, Field(json_schema_extra=LOCAL)] = None
    tls_cert: Annotated[str | None, Field(json_schema_extra=LOCAL)] = None
    tls_key: Annotated[str | None, Field(json_schema_extra=LOCAL)] = None
    tls_ca: Annotated[str | None, Field(json_schema_extra=LOCAL)] = None
    # the bulk channel: snapshot bytes over a plain socket (TLS with the service's) beside
    # gRPC, which stays the fallback; bulk_port 0: a free port
    bulk: Annotated[bool, Field(json_schema_extra=LOCAL)] = True
    bulk_port: Annotated[int, Field(ge=0, le=65535, json_schema_extra=LOCAL)] = 0
    keep_versions: Annotated[int, Field(ge=1)] = 3
    chunk_bytes: Annotated[int, Field(ge=4096, le=4 * MiB)] = 4 * MiB

    @model_validator(mode="after")
    def _tls_pair(self) -> WeightsConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        return self


class MetricsConfig(_Section):
    enabled: Annotated[bool, Field(json_schema_extra=LOCAL)] = True
    host: Annotated[str, Field(json_schema_extra=LOCAL)] = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535, json_schema_extra=LOCAL)] = 0


class Config(_Section):
    run: RunConfig = RunConfig()
    redis: RedisConfig = RedisConfig()
    model: ModelConfig = ModelConfig()
    actor: ActorConfig = ActorConfig()
    learner: LearnerConfig = LearnerConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    weights: WeightsConfig = WeightsConfig()
    metrics: MetricsConfig = MetricsConfig()


SECTIONS = tuple(Config.model_fields)


def _set_path(tree: dict[str, Any], path: str, value: Any, origin: str) -> None:
    parts = path.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{origin}: {path!r} is not of the form section.field")
    section, field = parts
    if section not in SECTIONS:
        raise ConfigError(f"{origin}: unknown section {section!r} (sections: {', '.join(SECTIONS)})")
    tree.setdefault(section, {})[field] = value


def _parse_scalar(text: str) -> Any:
    """A flag or env value: a TOML literal when it is one (1e-5, true, "x"), else the string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``HSD_LEARNER__LR=1e-5`` -> ``{"learner": {"lr": 1e-05}}``; other HSD_ vars are ignored."""
    tree: dict[str, Any] = {}
    for key, text in environ.items():
        if key.startswith(ENV_PREFIX) and "__" in key:
            path = key[len(ENV_PREFIX) :].lower().replace("__", ".", 1)
            _set_path(tree, path, _parse_scalar(text), f"environment variable {key}")
    return tree


def flag_overrides(assignments: Iterable[str]) -> dict[str, Any]:
    """``["learner.lr=1e-5"]`` -> ``{"learner": {"lr": 1e-05}}``."""
    tree: dict[str, Any] = {}
    for item in assignments:
        path, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected section.field=value")
        _set_path(tree, path.strip(), _parse_scalar(text.strip()), f"--set {item!r}")
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
        lines.append(f"  {path}: {e['msg']}{got}")
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


def _shared_view(model: BaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get("local"):
            continue
        value = getattr(model, name)
        out[name] = _shared_view(value) if isinstance(value, BaseModel) else value
    return out


def config_hash(config: Config) -> str:
    """sha256 (hex, 16 chars) of the canonical JSON of every non-LOCAL field."""
    canonical = json.dumps(_shared_view(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def to_toml(config: Config, mask_secrets: bool = True) -> str:
    """The resolved config as TOML, for logs and ``hsd config`` (secrets masked) or for
    the processes of a run to read (``mask_secrets=False``)."""
    lines: list[str] = []
    for section in SECTIONS:
        lines.append(f"[{section}]")
        for key, value in getattr(config, section).model_dump().items():
            if value is None:
                lines.append(f"# {key} unset")
                continue
            if key == "token" and mask_secrets:
                value = "***"
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)
