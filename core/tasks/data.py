"""Your own problems (``actor.task = "data"``): rows from a file or a dataset, mapped to
problems by the ``[data]`` section, scored by a built-in verifier or your reward plug-in.

Sources (``data.train``, ``data.eval``):

- a local file: ``.jsonl``, ``.json`` (a list of objects), ``.csv`` or ``.parquet``
  (pyarrow);
- a folder written by ``datasets``' ``save_to_disk`` (a ``Dataset``, or a ``DatasetDict``
  whose split ``data.train_split`` / ``data.eval_split`` is read);
- ``hf:OWNER/NAME``: ``datasets.load_dataset`` (with ``data.subset``), where a hub is
  reachable or the dataset is in the local cache.

A row becomes a :class:`Problem`: its prompt is ``data.prompt_template`` filled from the
row's fields (``{prompt}`` is the mapped prompt field; a prompt field that holds chat
messages is taken as it is), its answer the mapped answer field (``data.answer_pattern``
extracts a part of it), its reference solution the mapped solution field, and every field
of the row reaches the verifier, with ``answer`` the mapped answer. Without ``data.eval`` a fixed ``data.eval_fraction`` of
the train rows is held out (:func:`core.tasks.base.held_out`).

:func:`check_source` runs when the config is read, so a missing file, an unknown format or
a field the rows lack fails at start naming the field.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path
from string import Formatter
from typing import Any

from core.tasks.base import IndexedTask, Problem, Score, Verifier, held_out, score_final_answer
from services.errors import StartupError

HUB = "hf:"
FORMATS = (".jsonl", ".json", ".csv", ".parquet")
BUILT_IN_REWARDS = ("math", "code", "final-answer")


class DataError(StartupError, ValueError):
    """A data source or mapping is unusable; the message names the ``data.`` field. A
    ValueError when the config is read (pydantic reports it), a StartupError when a
    process loads the task (one line, exit 2)."""


def _needs(package: str, what: str) -> DataError:
    return DataError(f"{what} needs the {package} package: pip install 'hsd[data]'")


def _local(source: str, field: str) -> Path:
    path = Path(source)
    if not path.exists():
        raise DataError(f"{field}: {source!r} does not exist")
    if path.is_file() and path.suffix not in FORMATS:
        raise DataError(f"{field}: {source!r} is not a {', '.join(FORMATS)} file or a datasets folder")
    return path


def _datasets():
    try:
        import datasets
    except ImportError:
        raise _needs("datasets", "a datasets folder or an hf: source") from None
    return datasets


def _parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise _needs("pyarrow", "a .parquet file") from None
    return pq


def _dataset_split(loaded: Any, split: str, field: str, source: str) -> Any:
    if hasattr(loaded, "column_names") and not isinstance(loaded.column_names, dict):
        return loaded  # a Dataset: one split
    if split not in loaded:
        raise DataError(f"{field}: {source!r} has no split {split!r} (splits: {', '.join(loaded)})")
    return loaded[split]


def load_rows(source: str, split: str, subset: str | None = None, field: str = "data.train") -> list[dict[str, Any]]:
    """Every row of ``source`` (the split ``split`` where it has splits) as a dict."""
    if source.startswith(HUB):
        datasets = _datasets()
        try:
            loaded = datasets.load_dataset(source[len(HUB):], subset, split=split)
        except Exception as err:  # offline, unknown name, no such split: one line, not the hub's traceback
            raise DataError(f"{field}: cannot load {source!r} split {split!r}: {type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}") from None
        return [dict(row) for row in loaded]
    path = _local(source, field)
    if path.is_dir():
        return [dict(row) for row in _dataset_split(_datasets().load_from_disk(str(path)), split, field, source)]
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if path.suffix == ".json":
            rows = json.loads(path.read_text())
            if not isinstance(rows, list):
                raise DataError(f"{field}: {source!r} holds a {type(rows).__name__}, not a list of rows")
            return rows
        if path.suffix == ".csv":
            with path.open(newline="") as f:
                return list(csv.DictReader(f))
    except json.JSONDecodeError as err:
        raise DataError(f"{field}: {source!r} is not valid JSON: {err}") from None
    return _parquet().read_table(path).to_pylist()


def _columns(source: str, split: str, field: str) -> list[str] | None:
    """The field names of a local source's rows, read cheaply (None for a hub source)."""
    if source.startswith(HUB):
        return None
    path = _local(source, field)
    if path.is_dir():  # memory-mapped: its column names without reading the rows
        return list(_dataset_split(_datasets().load_from_disk(str(path)), split, field, source).column_names)
    if path.suffix == ".parquet":
        return list(_parquet().read_schema(path).names)
    if path.suffix == ".jsonl":
        with path.open() as f:
            first = next((line for line in f if line.strip()), None)
        if first is None:
            raise DataError(f"{field}: {source!r} holds no rows")
        try:
            row = json.loads(first)
        except json.JSONDecodeError as err:
            raise DataError(f"{field}: the first row of {source!r} is not valid JSON: {err}") from None
        return list(row) if isinstance(row, dict) else []
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return next(csv.reader(f), [])
    rows = load_rows(source, split, field=field)
    if not rows:
        raise DataError(f"{field}: {source!r} holds no rows")
    return list(rows[0]) if isinstance(rows[0], dict) else []


def template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in Formatter().parse(template) if name}


def check_source(data: Any) -> None:
    """What can be known of ``[data]`` without loading every row: the sources exist in a
    known format, and their rows have the mapped fields (DataError otherwise)."""
    try:
        template = template_fields(data.prompt_template)
    except ValueError as err:
        raise DataError(f"data.prompt_template: {err}") from None
    if data.answer_pattern is not None:
        try:
            if re.compile(data.answer_pattern).groups < 1:
                raise DataError("data.answer_pattern: needs a group, the part that is the answer")
        except re.error as err:
            raise DataError(f"data.answer_pattern: not a regular expression: {err}") from None
    if data.reward not in BUILT_IN_REWARDS:
        from core.tasks.reward_plugin import load_reward

        load_reward(data.reward)
    for field, source, split in (("data.train", data.train, data.train_split),
                                 ("data.eval", data.eval, data.eval_split)):
        if source is None:
            continue
        columns = _columns(source, split, field)
        if columns is None:
            continue
        wanted = [("data.prompt_field", data.prompt_field), ("data.answer_field", data.answer_field),
                  *(("data.prompt_template", name) for name in sorted(template - {"prompt"}))]
        for name, column in wanted:
            if column not in columns:
                raise DataError(f"{name}: the rows of {source!r} have no field {column!r} "
                                f"(fields: {', '.join(columns)})")


def _answer(row: dict[str, Any], data: Any, where: str) -> str:
    value = row.get(data.answer_field)
    if value is None:
        raise DataError(f"data.answer_field: {where} has no {data.answer_field!r}")
    text = str(value)
    if data.answer_pattern is None:
        return text
    found = re.search(data.answer_pattern, text)
    if found is None:
        raise DataError(f"data.answer_pattern: {data.answer_pattern!r} does not match the answer of {where}: "
                        f"{text[-80:]!r}")
    return found.group(1).strip()


def problem_from_row(row: dict[str, Any], data: Any, prompt_id: str) -> Problem:
    where = f"row {prompt_id}"
    if data.prompt_field not in row:
        raise DataError(f"data.prompt_field: {where} has no {data.prompt_field!r}")
    prompt = row[data.prompt_field]
    if isinstance(prompt, str):
        try:
            prompt = data.prompt_template.format_map({**row, "prompt": prompt})
        except KeyError as err:
            raise DataError(f"data.prompt_template: {where} has no field {err}") from None
    elif not (isinstance(prompt, list) and all(isinstance(m, dict) and {"role", "content"} <= set(m)
                                               for m in prompt)):
        raise DataError(f"data.prompt_field: {where}'s {data.prompt_field!r} is neither a string nor chat "
                        "messages ({role, content} objects)")
    solution = row.get(data.solution_field) if data.solution_field else None
    answer = _answer(row, data, where)
    return Problem(prompt_id, prompt, answer, fields={**row, "answer": answer},
                   reference=None if solution is None else str(solution))


def _problems(rows: list[dict[str, Any]], data: Any, prefix: str) -> list[Problem]:
    problems = []
    for n, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"data.{prefix}: row {n} is a {type(row).__name__}, not an object")
        key = row.get(data.id_field) if data.id_field else None
        problems.append(problem_from_row(row, data, f"{prefix}:{n}" if key is None else str(key)))
    return problems


def make_verifier(data: Any, timeout_s: float, allow_unsandboxed: bool) -> Verifier:
    """The verifier ``data.reward`` names: a built-in one or a plug-in."""
    if data.reward == "math":
        from core.tasks.math import MathVerifier

        return MathVerifier(timeout_s)
    if data.reward == "code":
        from core.tasks.code import CodeVerifier
        from core.tasks.sandbox import Limits, make_sandbox

        return CodeVerifier(make_sandbox(Limits(wall_s=timeout_s), allow_unsandboxed=allow_unsandboxed))
    if data.reward == "final-answer":
        return FinalAnswerVerifier()
    from core.tasks.reward_plugin import plugin_verifier

    return plugin_verifier(data.reward, sandboxed=data.reward_sandboxed, success_reward=data.success_reward,
                           timeout_s=timeout_s, allow_unsandboxed=allow_unsandboxed)


class FinalAnswerVerifier:
    """The integer after the last ``####`` against the answer (the chain tasks' rule)."""

    def verify(self, completion: str, fields: dict[str, Any]) -> Score:
        if fields.get("answer") is None:
            return Score(0.0, False, "no reference answer")
        return score_final_answer(completion, str(fields["answer"]))


def data_task(data: Any, *, timeout_s: float = 10.0, allow_unsandboxed: bool = False) -> IndexedTask:
    """The task ``[data]`` describes: train and held-out problems and their verifier."""
    if data.train is None:
        raise DataError("data.train: required with actor.task = 'data'")
    train = _problems(load_rows(data.train, data.train_split, data.subset, "data.train"), data, "train")
    if data.eval is not None:
        test = _problems(load_rows(data.eval, data.eval_split, data.subset, "data.eval"), data, "eval")
        test_ids = {p.prompt_id for p in test}
    else:
        test, test_ids = [], held_out([p.prompt_id for p in train], data.eval_fraction)
    problems = train + test
    counts = Counter(p.prompt_id for p in problems)
    if len(counts) != len(problems):
        twice = sorted(i for i, n in counts.items() if n > 1)[:3]
        raise DataError(f"data.id_field: ids {twice} occur more than once (train and eval ids must differ)")
    if not set(counts) - test_ids:
        raise DataError("data.eval_fraction: every problem is held out, none is left to train on")
    return IndexedTask("data", problems, make_verifier(data, timeout_s, allow_unsandboxed), test_ids)
