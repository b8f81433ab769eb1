"""GRPO: the baseline. One outcome advantage per rollout, A_i = (r_i − mean r)/(std r + ε)
(or Dr. GRPO's r_i − mean r), and no teacher."""

from __future__ import annotations

from core.config import AlgorithmConfig
from methods.base import Method


class GRPO(Method):
    name = "grpo"

    @classmethod
    def check(cls, algo: AlgorithmConfig) -> None:
        super().check(algo)
        if algo.advantage == "none":
            raise ValueError("advantage: method grpo needs advantage grpo or dr_grpo (none leaves no signal)")
