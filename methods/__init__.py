"""Training methods, one module each, behind :class:`methods.base.Method`.

Adding a method: a module with a ``Method`` subclass, one line in ``METHODS`` and its name
in ``core.config.AlgorithmConfig.method``.
"""

from __future__ import annotations

from core.config import AlgorithmConfig, Config, ConfigError
from methods.base import Method
from methods.grpo import GRPO
from methods.hsd import HSD
from methods.opsd import OPSD
from methods.sdzero import SDZero
from methods.srt import SRT

METHODS: dict[str, type[Method]] = {m.name: m for m in (GRPO, HSD, OPSD, SDZero, SRT)}


def make_method(algo: AlgorithmConfig) -> Method:
    """The method ``[algorithm] method`` names (ValueError for settings it refuses)."""
    return METHODS[algo.method](algo)


def check_config(config: Config) -> None:
    """ConfigError naming the field when the method refuses the run's settings."""
    try:
        METHODS[config.algorithm.method].check(config.algorithm)
    except ValueError as err:
        raise ConfigError(f"algorithm.{err}") from None
