"""Your own data and rewards: every source format, the field mapping, the splits, the
errors at start that name the field, and the reward plug-in in process and in the sandbox."""

from __future__ import annotations

import csv
import itertools
import json

import pytest

from core.config import ConfigError, load_config
from core.tasks import configured_task
from core.tasks.base import Score
from core.tasks.reward_plugin import as_score
from core.tasks.sandbox import backend_works

ROWS = [{"id": f"p{n}", "question": f"What is {n} + {n}?", "solution": f"{n}+{n}={2 * n} #### {2 * n}",
         "level": n % 3} for n in range(20)]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(*overrides: str):
    return load_config(environ={}, overrides=['actor.task="data"', *overrides])


def _gsm8k_style(path):
    """GSM8K's shape: the answer field is the worked solution ending in "#### N"."""
    return _jsonl(path, [{"id": r["id"], "question": r["question"], "answer": r["solution"]} for r in ROWS])


def test_a_jsonl_file_with_a_field_mapping_a_template_and_an_answer_pattern(tmp_path):
    train = _gsm8k_style(tmp_path / "train.jsonl")
    config = _config(f'data.train="{train}"', 'data.prompt_field="question"', 'data.solution_field="answer"',
                     r'data.answer_pattern="####\\s*(.+)$"', r'data.prompt_template="Q: {prompt}\nA:"',
                     'data.reward="final-answer"')
    task = configured_task(config)
    problem = task.problem("p3")
    assert problem.prompt == "Q: What is 3 + 3?\nA:"
    assert problem.answer == "6" and problem.reference == "3+3=6 #### 6"
    assert task.score("3+3=6 #### 6", problem) == Score(1.0, True)
    assert not task.score("#### 7", problem).success
    held_out = {p.prompt_id for p in task.problems("test")}
    assert len(held_out) == 2  # data.eval_fraction 0.1 of 20
    train_ids = {p.prompt_id for p in itertools.islice(task.problems("train"), 40)}
    assert train_ids == {r["id"] for r in ROWS} - held_out
    # the held-out draw is fixed: the same for another process, whatever the row order
    _gsm8k_style(tmp_path / "reversed.jsonl").write_text(
        "".join(reversed(train.read_text().splitlines(keepends=True))))
    again = configured_task(_config(f'data.train="{tmp_path / "reversed.jsonl"}"', 'data.prompt_field="question"',
                                    r'data.answer_pattern="####\\s*(.+)$"'))
    assert {p.prompt_id for p in again.problems("test")} == held_out


def _write_json(path, rows):
    path.write_text(json.dumps(rows))


def _write_csv(path, rows):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _write_parquet(path, rows):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize(("suffix", "write"), [(".json", _write_json), (".csv", _write_csv),
                                               (".parquet", _write_parquet)])
def test_every_file_format_reads_the_same_problems(tmp_path, suffix, write):
    rows = [{"id": r["id"], "prompt": r["question"], "answer": str(2 * n)} for n, r in enumerate(ROWS)]
    write(tmp_path / f"train{suffix}", rows)
    _jsonl(tmp_path / "train.jsonl", rows)
    tasks = [configured_task(_config(f'data.train="{tmp_path / name}"')) for name in (f"train{suffix}", "train.jsonl")]
    assert [(p.prompt_id, p.prompt, p.answer) for p in tasks[0].by_id.values()] == \
           [(p.prompt_id, p.prompt, p.answer) for p in tasks[1].by_id.values()]
    assert tasks[0].test_ids == tasks[1].test_ids


def test_a_datasets_folder_with_named_splits_and_a_separate_eval_source(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": r["question"], "answer": str(2 * n)} for n, r in enumerate(ROWS)]  # no id field
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:15]),
                          "validation": datasets.Dataset.from_list(rows[15:])}).save_to_disk(str(tmp_path / "ds"))
    folder = str(tmp_path / "ds")
    task = configured_task(_config(f'data.train="{folder}"', f'data.eval="{folder}"', 'data.eval_split="validation"'))
    test = list(task.problems("test"))
    assert [p.prompt for p in test] != [] and sorted(p.prompt_id for p in test) == [f"eval:{n}" for n in range(5)]
    assert {p.answer for p in test} == {str(2 * n) for n in range(15, 20)}
    assert len(task.by_id) == 20  # every train row trains: the eval source is the held-out set
    with pytest.raises(ConfigError, match=r"data\.eval: .* has no split 'test' \(splits: train, validation\)"):
        _config(f'data.train="{folder}"', f'data.eval="{folder}"')


def test_a_prompt_field_of_chat_messages_is_taken_as_it_is(tmp_path):
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}]
    train = _jsonl(tmp_path / "chat.jsonl", [{"id": "c", "prompt": messages, "answer": "4"},
                                             {"id": "d", "prompt": "3+3?", "answer": "6"}])
    task = configured_task(_config(f'data.train="{train}"', "data.eval_fraction=0.0"))
    assert task.problem("c").prompt == messages and task.test_ids == set()


@pytest.mark.parametrize(("overrides", "needle"), [
    (['data.train="{dir}/none.jsonl"'], r"data\.train: '.*none\.jsonl' does not exist"),
    (['data.train="{dir}/train.txt"'], r"data\.train: .* is not a \.jsonl, \.json, \.csv, \.parquet file"),
    (['data.train="{dir}/train.jsonl"', 'data.prompt_field="prompt"'],
     r"data\.prompt_field: the rows of .* have no field 'prompt' \(fields: id, question, solution, level\)"),
    (['data.train="{dir}/train.jsonl"', 'data.prompt_field="question"', 'data.answer_field="final"'],
     r"data\.answer_field: .* no field 'final'"),
    (['data.train="{dir}/train.jsonl"', 'data.prompt_field="question"', 'data.answer_field="solution"',
      'data.prompt_template="{{prompt}} ({{topic}})"'], r"data\.prompt_template: .* no field 'topic'"),
    (['data.train="{dir}/train.jsonl"', 'data.prompt_field="question"', 'data.answer_field="solution"',
      'data.answer_pattern="####"'], r"data\.answer_pattern: needs a group"),
    (['data.train="{dir}/train.jsonl"', 'data.prompt_field="question"', 'data.answer_field="solution"',
      'data.reward="no_such_module:score"'], r"data\.reward: cannot import 'no_such_module'"),
    (['data.train="{dir}/train.jsonl"', 'data.prompt_field="question"', 'data.answer_field="solution"',
      'data.reward="scores"'], r"data\.reward: 'scores' is neither a built-in reward nor MODULE:FUNCTION"),
    ([], r"data\.train: unset, and actor\.task = 'data' reads its problems from it"),
])
def test_a_bad_source_or_mapping_fails_at_start_naming_the_field(tmp_path, overrides, needle):
    _jsonl(tmp_path / "train.jsonl", ROWS)
    (tmp_path / "train.txt").write_text("x")
    with pytest.raises(ConfigError, match=needle):
        _config(*(o.format(dir=tmp_path) for o in overrides))


def test_rows_that_break_the_mapping_later_in_the_file_name_the_row(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"id": "a", "prompt": "x", "answer": "1"},
                                              {"id": "b", "prompt": "y", "answer": "no number"},
                                              {"id": "a", "prompt": "z", "answer": "3"}])
    with pytest.raises(ValueError, match=r"data\.answer_pattern: .* does not match the answer of row b"):
        configured_task(_config(f'data.train="{train}"', r'data.answer_pattern="(\\d+)"'))
    with pytest.raises(ValueError, match=r"data\.id_field: ids \['a'\] occur more than once"):
        configured_task(_config(f'data.train="{train}"'))


def test_an_hf_source_out_of_reach_is_one_line_naming_the_field(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    config = _config('data.train="hf:nobody/no-such-dataset"')  # nothing to check offline at start
    with pytest.raises(ValueError, match=r"^data\.train: cannot load 'hf:nobody/no-such-dataset' split 'train'"):
        configured_task(config)


PLUGIN = '''
import json


def score(completion, fields):
    """1 for the answer after ####, half for the answer anywhere, and a note of the level."""
    if "#### " + fields["answer"] in completion:
        return {"reward": 1.0, "success": True}
    if fields["answer"] in completion:
        return 0.5
    if completion == "raise":
        raise RuntimeError("the completion broke me")
    if completion == "odd":
        return [1]
    return False
'''


def _plugin_task(tmp_path, *extra: str, source: str = PLUGIN):
    (tmp_path / "my_reward.py").write_text(source)
    train = _jsonl(tmp_path / "train.jsonl", [{"id": r["id"], "prompt": r["question"], "answer": str(2 * n)}
                                              for n, r in enumerate(ROWS)])
    return configured_task(_config(f'data.train="{train}"', f'data.reward="{tmp_path / "my_reward.py"}:score"',
                                   *extra))


def _plugin_scores(task):
    problem = task.problem("p4")
    return [task.score(c, problem) for c in ("so #### 8", "8 maybe", "7", "raise", "odd")]


def test_a_reward_plugin_file_scores_in_process_and_its_failures_score_zero(tmp_path):
    full, half, wrong, raised, odd = _plugin_scores(_plugin_task(tmp_path))
    assert full == Score(1.0, True) and half == Score(0.5, False) and wrong == Score(0.0, False)
    assert raised.reward == 0.0 and raised.error == "RuntimeError: the completion broke me"
    assert odd.reward == 0.0 and "returned list" in odd.error
    assert _plugin_scores(_plugin_task(tmp_path, "data.success_reward=0.5"))[1] == Score(0.5, True)


@pytest.mark.skipif(not any(backend_works(b) for b in ("bwrap", "unshare")), reason="no isolating sandbox here")
def test_a_sandboxed_reward_plugin_scores_the_same_and_cannot_reach_the_host(tmp_path):
    task = _plugin_task(tmp_path, "data.reward_sandboxed=true")
    assert [(s.reward, s.success) for s in _plugin_scores(task)] == \
           [(1.0, True), (0.5, False), (0.0, False), (0.0, False), (0.0, False)]
    reads_host = f"def score(completion, fields):\n    return open({str(tmp_path / 'train.jsonl')!r}).read() != ''\n"
    assert _plugin_task(tmp_path, source=reads_host).score("x", task.problem("p1")) == Score(1.0, True)
    reading = _plugin_task(tmp_path, "data.reward_sandboxed=true", source=reads_host).score("x", task.problem("p1"))
    assert not reading.success and "FileNotFoundError" in reading.error  # host files are out of its sight
    loops = "def score(completion, fields):\n    while True:\n        pass\n"
    looping = _plugin_task(tmp_path, "data.reward_sandboxed=true", "actor.verifier_timeout_s=1", source=loops)
    assert looping.score("x", task.problem("p1")) == Score(0.0, False, "timeout")


@pytest.mark.parametrize(("result", "score"), [
    (True, Score(1.0, True)), (0, Score(0.0, False)), (0.99, Score(0.99, False)), (2, Score(2.0, True)),
    ({"reward": 0.2, "success": True}, Score(0.2, True)), ({"reward": 1.0, "error": "late"}, Score(1.0, True, "late")),
])
def test_every_result_form_of_a_plugin_becomes_a_score(result, score):
    assert as_score(result, success_reward=1.0) == score


@pytest.mark.parametrize("result", [None, "1.0", float("nan"), {"reward": "high"}, {"success": True}])
def test_a_result_of_another_kind_scores_zero_with_the_reason(result):
    score = as_score(result, success_reward=1.0)
    assert score.reward == 0.0 and not score.success and "the reward function returned" in score.error
