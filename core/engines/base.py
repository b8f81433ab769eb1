"""The generation engine interface actors use; ``make_engine(config)`` picks hf or vllm."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Completion:
    ids: list[int]  # sampled tokens, ending with the stop token when finish == "stop"
    logprobs: list[float]  # μ(y_t): log-prob of each sampled token under the sampling distribution
    finish: str  # "stop" | "length"
    text: str  # decoded without special tokens


@dataclass(frozen=True)
class SamplingSettings:
    n: int = 8  # samples per prompt (G)
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0


class Engine(ABC):
    version: int = -1  # policy version of the loaded weights (-1: the initial checkpoint)
    tokenizer: Any  # the model's tokenizer (prompts are rendered with it)

    @abstractmethod
    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingSettings,
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """``sampling.n`` completions for each prompt (token ids, chat template applied);
        with ``seeds`` (one per prompt) each prompt's completions are a function of its
        seed and the weights alone, whatever else is in the batch."""

    @abstractmethod
    def load_weights(self, tensors: Mapping[str, torch.Tensor], version: int) -> None:
        """Replace the weights in place, all or nothing."""

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...
