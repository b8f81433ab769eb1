"""Training methods, one module each, behind :class:`methods.base.Method`.

Adding a method: a module with a ``Method`` subclass and one entry in
:data:`core.method_registry.METHOD_REGISTRY`, from which :data:`METHODS` is built.
"""

from __future__ import annotations

import importlib

from core.config import AlgorithmConfig, Config, ConfigError
from core.method_registry import METHOD_REGISTRY
from methods.base import Method


def _implementation(name: str, module: str) -> type[Method]:
    """The ``Method`` subclass named ``name`` in ``module`` (ImportError where it has none:
    a registry entry pointing at the wrong module fails on the first import of methods)."""
    found = [c for c in vars(importlib.import_module(module)).values()
             if isinstance(c, type) and issubclass(c, Method) and c.__dict__.get("name") == name]
    if len(found) != 1:
        raise ImportError(f"{module} defines {len(found)} Method subclasses named {name!r}, not one")
    return found[0]


METHODS: dict[str, type[Method]] = {name: _implementation(name, e.module) for name, e in METHOD_REGISTRY.items()}


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
