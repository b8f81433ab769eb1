"""Engines by name: ``make_engine(config, model_path)``."""

from __future__ import annotations

from core.engines.base import Completion, Engine, SamplingSettings

__all__ = ["Completion", "Engine", "SamplingSettings", "make_engine"]


def make_engine(engine: str, model_path: str, *, dtype: str = "float32", trust_remote_code: bool = False,
                max_model_len: int = 2048, gpu_memory_utilization: float = 0.9) -> Engine:
    if engine == "hf":
        from core.engines.hf import HFEngine

        return HFEngine.from_pretrained(model_path, dtype=dtype, trust_remote_code=trust_remote_code)
    if engine == "vllm":
        from core.engines.vllm import VLLMEngine

        return VLLMEngine(model_path, dtype=dtype, trust_remote_code=trust_remote_code,
                          max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization)
    raise ValueError(f"unknown engine {engine!r}")
