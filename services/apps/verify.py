"""``hsd verify --task T --input FILE.jsonl [--output FILE] [--workers N]``; ``--task data
--config FILE`` scores with that run's ``[data]`` reward (your plug-in, sandboxed as configured).

One output line per input line, ``{"reward", "success", "error"}``, in input order, then a
summary line ``{"summary": {"n", "successes", "success_rate", "reward_mean", "errors"}}``.
A line that is not JSON or has no ``completion`` gets an error entry; nothing stops the run.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import sys
from typing import Any, TextIO

from core.tasks import Score, Task


def _score_line(task: Task, line: str) -> Score:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        return Score(0.0, False, f"not JSON: {err}")
    if not isinstance(row, dict) or not isinstance(row.get("completion"), str):
        return Score(0.0, False, "line has no string field 'completion'")
    return task.verify(row["completion"], row)


def verify_file(task: Task, lines: list[str], out: TextIO, workers: int = 4) -> dict[str, Any]:
    lines = [line for line in lines if line.strip()]
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        scores = list(pool.map(lambda line: _score_line(task, line), lines))
    for s in scores:
        out.write(json.dumps(s.as_dict()) + "\n")
    n = len(scores)
    summary = {
        "n": n,
        "successes": sum(s.success for s in scores),
        "success_rate": sum(s.success for s in scores) / n if n else 0.0,
        "reward_mean": sum(s.reward for s in scores) / n if n else 0.0,
        "errors": sum(s.error is not None for s in scores),
    }
    out.write(json.dumps({"summary": summary}) + "\n")
    return summary


def main(task: Task, input_path: str, output_path: str | None, workers: int) -> int:
    with open(input_path) as f:
        lines = f.read().splitlines()
    if output_path:
        with open(output_path, "w") as out:
            summary = verify_file(task, lines, out, workers)
    else:
        summary = verify_file(task, lines, sys.stdout, workers)
    print(f"{task.name}: {summary['successes']}/{summary['n']} succeeded, "
          f"mean reward {summary['reward_mean']:.3f}", file=sys.stderr)
    return 0
