"""Your reward function (``data.reward = "package.module:function"`` or ``"path/file.py:function"``).

The function is called as ``function(completion: str, fields: dict) -> result``, where
``fields`` is the problem's row with its mapped ``answer``, and the result is one of

- a bool (success; reward 1.0 or 0.0),
- a number (the reward; a success where it is ≥ ``data.success_reward``),
- a dict ``{"reward": float, "success": bool?, "error": str?}``, or a :class:`Score`.

An exception, or a result of another kind, scores 0 with the error named, never crashing
the actor: the completion is model output and may be anything.

With ``data.reward_sandboxed`` the function runs in the sandbox of generated code
(:mod:`core.tasks.sandbox`: no network, no host files, rlimits, a wall-time limit): for a
reward that executes or parses model output with tools that could be exploited. There the
plug-in must be one file that imports only the standard library: its source is what the
sandbox runs, followed by the call, whose JSON result is read after a random token that
the program prints last.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import math
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.tasks.base import Score
from core.tasks.sandbox import Limits, Sandbox, make_sandbox
from services.errors import StartupError

RewardFn = Callable[[str, dict[str, Any]], Any]


class PluginError(StartupError, ValueError):
    """The plug-in named in ``data.reward`` cannot be loaded; the message names it (read
    like :class:`core.tasks.data.DataError`)."""


def _split(spec: str) -> tuple[str, str]:
    module, sep, name = spec.rpartition(":")
    if not sep or not module or not name.isidentifier():
        raise PluginError(f"data.reward: {spec!r} is neither a built-in reward nor MODULE:FUNCTION "
                          "(package.module:function or path/file.py:function)")
    return module, name


def load_reward(spec: str) -> RewardFn:
    """The function ``spec`` names, imported (a ``.py`` path is loaded as a file)."""
    module_name, name = _split(spec)
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise PluginError(f"data.reward: {module_name!r} does not exist")
            spec_ = importlib.util.spec_from_file_location(f"hsd_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(spec_)
            spec_.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except PluginError:
        raise
    except Exception as err:  # the plug-in's own import error, in one line
        raise PluginError(f"data.reward: cannot import {module_name!r}: {type(err).__name__}: {err}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise PluginError(f"data.reward: {module_name!r} has no function {name!r}")
    return function


def as_score(result: Any, success_reward: float) -> Score:
    """A plug-in's result as a Score (the forms in the module docstring)."""
    if isinstance(result, Score):
        return result
    if isinstance(result, bool):
        return Score(float(result), result)
    if isinstance(result, dict) and "reward" in result:
        reward = result["reward"]
        if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
            return Score(0.0, False, f"the reward function returned reward {reward!r}, not a finite number")
        success = result.get("success", reward >= success_reward)
        error = result.get("error")
        return Score(float(reward), bool(success), None if error is None else str(error))
    if isinstance(result, (int, float)) and math.isfinite(result):
        return Score(float(result), result >= success_reward)
    return Score(0.0, False, f"the reward function returned {type(result).__name__} {str(result)[:80]!r}, "
                             "not a bool, a number or {reward, success}")


class PluginVerifier:
    """The plug-in called in this process."""

    def __init__(self, function: RewardFn, success_reward: float) -> None:
        self.function, self.success_reward = function, success_reward

    def verify(self, completion: str, fields: dict[str, Any]) -> Score:
        try:
            return as_score(self.function(completion, fields), self.success_reward)
        except Exception as err:  # model output may make any reward function raise
            return Score(0.0, False, f"{type(err).__name__}: {str(err)[:200]}")


class SandboxedPluginVerifier:
    """The plug-in's source run in the sandbox once per completion."""

    def __init__(self, source: str, name: str, sandbox: Sandbox, success_reward: float) -> None:
        self.source, self.name, self.sandbox, self.success_reward = source, name, sandbox, success_reward

    def program(self, completion: str, fields: dict[str, Any], token: str) -> str:
        arguments = json.dumps([completion, fields], default=str)
        return (f"{self.source}\n\nimport json as _hsd_json\n"
                f"_hsd_result = {self.name}(*_hsd_json.loads({arguments!r}))\n"
                f"print({token!r} + _hsd_json.dumps(_hsd_result), flush=True)\n")

    def verify(self, completion: str, fields: dict[str, Any]) -> Score:
        token = secrets.token_hex(16)
        result = self.sandbox.run_python(self.program(completion, fields, token))
        if result.killed:
            return Score(0.0, False, result.killed)
        last = (result.stdout.decode(errors="replace").rstrip().splitlines() or [""])[-1]
        if not result.ok or not last.startswith(token):
            tail = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            return Score(0.0, False, f"exit {result.returncode}: {tail[0][:200]}")
        try:
            return as_score(json.loads(last[len(token):]), self.success_reward)
        except json.JSONDecodeError:
            return Score(0.0, False, "the reward function's result is not JSON")


def plugin_verifier(spec: str, *, sandboxed: bool, success_reward: float, timeout_s: float = 10.0,
                    allow_unsandboxed: bool = False) -> PluginVerifier | SandboxedPluginVerifier:
    """The verifier of ``data.reward``: loaded and checked here, so a bad spec fails at start."""
    function = load_reward(spec)
    if not sandboxed:
        return PluginVerifier(function, success_reward)
    module_name, name = _split(spec)
    source_file = module_name if module_name.endswith(".py") else getattr(inspect.getmodule(function), "__file__",
                                                                           None)
    if source_file is None:
        raise PluginError(f"data.reward: {spec!r} has no source file for the sandbox to run")
    sandbox = make_sandbox(Limits(wall_s=timeout_s), allow_unsandboxed=allow_unsandboxed)
    return SandboxedPluginVerifier(Path(source_file).read_text(), name, sandbox, success_reward)
