"""Learner on a GPU: a Qwen3-0.6B-shaped model (596M parameters, vocabulary 151,936) on one
batch of B = 4 groups × G = 8 responses of 512 and 2,048 tokens, through
``TorchTrainer.train_step``, and ``hsd run`` end to end with a 0.44B model (the same layers,
the tiny tokenizer's vocabulary) and two hf actors. Skipped, with a message, without CUDA.

Figures (each a ratio against a baseline measured in the same run):

- GRPO step tokens/s against a bare step over the same sequences that uses the fastest
  settings the learner has (no attention mask, the chunked head, fused AdamW, the same
  precision) with a plain NLL: the learner's own overhead (goal ≥ 0.95);
- HSD / GRPO step time: the teacher's cost (half the samples fail and are distilled, their
  teacher views share the prompt + peer context per group; goal ≤ 1.3);
- model FLOP utilisation, 6·N·tokens / (step time · peak), against the bare step's;
- peak GPU memory of the GRPO and HSD steps (goal ≤ 25 GB at 512-token responses, with
  activation checkpointing);
- ``hsd run`` (0.44B, bf16, 2 hf actors, 12 steps): learner step time, time the learner is
  blocked by publication per version (goal ≤ 0.1 s), publication lag, actor weight sync
  time, learner idle fraction (goal ≤ 0.2).
"""

from __future__ import annotations

import contextlib
import gc
import json
import re
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch

from bench.common import Figure, Scale

SHAPE_06B = {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
             "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 8192}
VOCAB_06B = 151_936
PROMPT_TOKENS = 64
GROUPS, G = 4, 8
PEAK_BF16_FLOPS = 989e12  # H100/H200 SXM dense bf16


def _model(dtype: torch.dtype):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=VOCAB_06B, tie_word_embeddings=True, **SHAPE_06B)
    with torch.device("cuda"):
        return Qwen3ForCausalLM(config).to(dtype)


def _samples(length: int, method: str):
    """B = GROUPS × G random sequences; half of each group fails and, for HSD, gets a teacher
    view (prompt + the group's successful peer + the response)."""
    from core.views import ScoringInput
    from methods.base import TrainingSample

    g = torch.Generator().manual_seed(length)
    out = []
    for group in range(GROUPS):
        prompt = torch.randint(10, VOCAB_06B, (PROMPT_TOKENS,), generator=g).tolist()
        responses = [torch.randint(10, VOCAB_06B, (length,), generator=g).tolist() for _ in range(G)]
        peer = responses[0]
        for i, y in enumerate(responses):
            success = i % 2 == 0
            teacher = None
            if method == "hsd" and not success:
                context = prompt + peer + [7]
                teacher = ScoringInput(context + y, len(context), len(y))
            out.append(TrainingSample(
                student=ScoringInput(prompt + y, len(prompt), len(y)), teacher=teacher,
                behaviour=-torch.rand(length, generator=g) * 8, advantage=1.0 if success else -1.0,
                reward=float(success), success=success, policy_version=0, group_id=str(group), index=i,
                peer_ids=peer if teacher else None, peer_ref=None))
    return out


def _config(method: str, dtype: str, checkpointing: bool, compiled: bool):
    from core.config import load_config

    return load_config(environ={}, overrides=[
        f'algorithm.method="{method}"', 'algorithm.teacher="frozen"', "learner.lr=1e-6",
        "learner.microbatch_tokens=16384", f'model.dtype="{dtype}"',
        f"learner.activation_checkpointing={'true' if checkpointing else 'false'}",
        f"learner.compile={'true' if compiled else 'false'}"])


def _timed(step, repeats: int, warmup: int) -> float:
    for _ in range(warmup):  # allocator, kernels; learner.compile: the compilations
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def measure_trainer(method: str, length: int, dtype: str, checkpointing: bool, compiled: bool, repeats: int,
                    share_contexts: bool = True) -> dict:
    from learner.trainer import TorchTrainer

    _free()
    config = _config(method, dtype, checkpointing, compiled)
    trainer = TorchTrainer(_model(getattr(torch, dtype)), config, pad_id=0)
    trainer.share_contexts = share_contexts
    samples = _samples(length, method)
    seconds = _timed(lambda: trainer.train_step(samples), repeats, warmup=2 if compiled else 1)
    out = {"seconds": seconds, "peak_gb": torch.cuda.max_memory_allocated() / 1e9,
           "tokens": sum(len(s.student.ids) for s in samples),
           "params": sum(p.numel() for p in trainer.model.parameters())}
    return out


def measure_bare(length: int, dtype: str, checkpointing: bool, compiled: bool, repeats: int) -> dict:
    """Forward + backward + fused AdamW of the student sequences with the learner's fastest
    settings (no mask, chunked head, the same precision, the backbone compiled where the
    learner's is) and a plain token-mean NLL."""
    from learner.batch import length_buckets
    from learner.logprobs import head_loss, response_hidden, split_causal_lm, token_logprobs

    _free()
    model = _model(getattr(torch, dtype))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    autocast = dtype == "float32"
    inputs = [s.student for s in _samples(length, "grpo")]
    n_tok = sum(x.length for x in inputs)
    buckets = length_buckets([len(x.ids) for x in inputs], 16384)
    backbone, weight = split_causal_lm(model)
    if compiled:
        backbone = torch.compile(backbone, dynamic=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for bucket in buckets:
            batch = [inputs[k] for k in bucket]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                hidden, targets, mask = response_hidden(backbone, batch, 0, weight.device)
                loss = head_loss(hidden, weight,
                                 lambda rows, z, t=targets, m=mask: -(token_logprobs(z, t[rows]) * m[rows]).sum() / n_tok,
                                 compute_dtype=torch.bfloat16)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    seconds = _timed(step, repeats, warmup=2 if compiled else 1)
    out = {"seconds": seconds, "peak_gb": torch.cuda.max_memory_allocated() / 1e9}
    return out


def _mfu(params: int, tokens: int, seconds: float) -> float:
    return 6 * params * tokens / seconds / PEAK_BF16_FLOPS


def trainer_figures(length: int, dtype: str, checkpointing: bool, repeats: int, compiled: bool = False) -> list[Figure]:
    grpo = measure_trainer("grpo", length, dtype, checkpointing, compiled, repeats)
    hsd = measure_trainer("hsd", length, dtype, checkpointing, compiled, repeats)
    unshared = measure_trainer("hsd", length, dtype, checkpointing, compiled, repeats, share_contexts=False)
    bare = measure_bare(length, dtype, checkpointing, compiled, repeats)
    tag = (f"{length}_{'bf16master' if dtype == 'bfloat16' else 'fp32autocast'}{'_ckpt' if checkpointing else ''}"
           f"{'_compiled' if compiled else ''}")
    setting = (f"0.6B Qwen3 shape, B=32 x {length} tokens (+{PROMPT_TOKENS} prompt), microbatch 16384, "
               f"{'bf16 params + fp32 master' if dtype == 'bfloat16' else 'fp32 params, bf16 autocast'}"
               f"{', activation checkpointing' if checkpointing else ''}{', learner.compile' if compiled else ''}")
    tokens, params = grpo["tokens"], grpo["params"]
    return [
        Figure(f"gpu_grpo_tokens_per_s_{tag}", tokens / grpo["seconds"], tokens / bare["seconds"], ">= 0.95",
               "tokens/s", f"vs bare step; {setting}; GRPO step {grpo['seconds']:.3f}s"),
        Figure(f"gpu_hsd_vs_grpo_step_time_{tag}", hsd["seconds"], grpo["seconds"], "<= 1.3", "s/step", setting),
        Figure(f"gpu_hsd_shared_vs_unshared_contexts_{tag}", hsd["seconds"], unshared["seconds"], "<= 1.0", "s/step",
               "HSD step with each prompt + peer run once (KV cache) against every teacher view run whole"),
        Figure(f"gpu_grpo_mfu_{tag}", _mfu(params, tokens, grpo["seconds"]), _mfu(params, tokens, bare["seconds"]),
               ">= 0.95", "MFU", "6·N·tokens/(t·989 TFLOP/s), vs the bare step's MFU; goal MFU ≥ 0.30 at 2048"),
        Figure(f"gpu_grpo_peak_gb_{tag}", grpo["peak_gb"], 25.0, "<= 1.0", "GB",
               f"peak allocated in the GRPO step against the 25 GB goal (HSD {hsd['peak_gb']:.1f} GB, "
               f"bare {bare['peak_gb']:.1f} GB)"),
    ]


def _scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(hsd_[a-z_]+(?:_sum|_count))\s+(\S+)$", text, re.M)}


def hsd_run_figures(steps: int, keep_in: str | None = None, prompts_per_batch: int = 1) -> list[Figure]:
    """``hsd run`` with a 0.44B bf16 model and two hf actors on this GPU (its folder kept
    in ``keep_in`` if given, else removed)."""
    from core.config import EMBEDDED_CONFIG, load_config
    from learner.tiny_model import build_tiny_model
    from services.apps.launcher import Launcher, Placement

    folder = tempfile.TemporaryDirectory(prefix="hsd-bench-gpu-") if keep_in is None \
        else contextlib.nullcontext(tempfile.mkdtemp(prefix="hsd-bench-gpu-", dir=keep_in))
    with folder as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", seed=0, **SHAPE_06B)
        config = load_config(EMBEDDED_CONFIG, environ={}, extra={
            "run": {"steps": steps, "dir": str(Path(tmp) / "run"), "name": "bench-gpu"},
            "model": {"dtype": "bfloat16"}, "actor": {"prompts_per_batch": prompts_per_batch},
            "learner": {"checkpoint_every": 0, "credit_log_every": 0, "eval_every": 0}})
        launcher = Launcher(config, 2, str(model_dir), Placement.shared(2))
        syncs: dict[str, dict[str, float]] = {}
        done = threading.Event()

        def watch() -> None:  # the actors' sync histograms, until they are stopped
            endpoints = Path(config.run.dir) / "endpoints.json"
            while not done.is_set():
                if endpoints.exists():
                    for name, url in json.loads(endpoints.read_text())["metrics"].items():
                        if name.startswith("actor"):
                            with contextlib.suppress(OSError):
                                syncs[name] = _scrape(url)
                done.wait(1.0)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        summary = launcher.run()
        done.set()
        watcher.join()
    t = summary["throughput"]
    per = t["learner_seconds_per_version"]
    sync = [s["hsd_actor_weight_sync_seconds_sum"] / s["hsd_actor_weight_sync_seconds_count"]
            for s in syncs.values() if s.get("hsd_actor_weight_sync_seconds_count")]
    note = (f"hsd run, 0.44B bf16, 2 hf actors ({prompts_per_batch} prompts per generate call), "
            f"{summary['steps']} steps; step {per['step']}s, "
            f"publication lag {per['publish_lag']}s, actor sync {', '.join(f'{s:.3f}' for s in sync)}s")
    tag = "" if prompts_per_batch == 1 else f"_{prompts_per_batch}prompts"
    return [
        Figure(f"gpu_run_publish_blocked_s_per_version{tag}", per["publish_blocked"], 0.1, "<= 1.0", "s", note),
        Figure(f"gpu_run_learner_idle_fraction{tag}", t["learner_idle_fraction"], 0.2, "<= 1.0", "fraction",
               "against the 0.2 goal"),
        Figure(f"gpu_run_publish_lag_vs_step{tag}", per["publish_lag"], per["step"], "<= 1.0", "s",
               "a version is fetchable before the next step ends"),
    ]


def run(scale: Scale = Scale.QUICK) -> list[Figure]:
    if not torch.cuda.is_available():
        print("[bench] learner_gpu: skipped: no CUDA device here", file=sys.stderr)
        return []
    repeats = 1 if scale is Scale.SMOKE else 3
    figures = trainer_figures(512, "float32", True, repeats)
    figures += trainer_figures(512, "float32", False, repeats)
    figures += trainer_figures(2048, "float32", False, repeats)
    if scale is Scale.FULL:
        figures += trainer_figures(2048, "bfloat16", False, repeats)
        figures += trainer_figures(2048, "bfloat16", False, repeats, compiled=True)
    figures += hsd_run_figures(12)
    if scale is Scale.FULL:
        figures += hsd_run_figures(12, prompts_per_batch=4)
    return figures


if __name__ == "__main__":
    from bench.common import table

    print(table(run()))
