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
from methods.rft import RFT
from methods.sdzero import SDZero
from methods.srt import SRT

METHODS: dict[str, type[Method]] = {m.name: m for m in (GRPO, HSD, OPSD, SDZero, SRT, RFT)}


def make_method(algo: AlgorithmConfig) -> Method:
    """The method ``[algorithm] method`` names (ValueError for settings it refuses)."""
    return METHODS[algo.method](algo)


def configure(config: Config) -> None:
    """The method's defaults for the ``[algorithm]`` fields the run did not set (in place),
    then its checks: ConfigError naming the field when it refuses the run's settings.

    Every process of a run calls this once after parsing its config; a config written out
    after it (``config.toml`` in the run dir) sets every field, so reading it back changes
    nothing."""
    algo = config.algorithm
    method = METHODS[algo.method]
    for field, value in method.defaults.items():
        if field not in algo.model_fields_set:
            setattr(algo, field, value)
    try:
        method.check(algo)
    except ValueError as err:
        raise ConfigError(f"algorithm.{err}") from None
