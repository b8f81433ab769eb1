"""A user's own job: `hsd run` on problems from a JSONL file with a separate eval file and a
reward plug-in of theirs, as the README's "Your data and reward" section writes it."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest

from core.tasks.chain import ChainTask

REWARD = '''
def final_answer(completion, fields):
    """A success when the text after the last #### is the answer; each call's problem id
    goes to a file, so the test sees that this function scored the rollouts, on which rows."""
    with open(__file__ + ".calls", "a") as calls:
        calls.write(fields["id"] + "\\n")
    return completion.rsplit("####", 1)[-1].strip() == fields["answer"]
'''


def _rows(split: str, n: int) -> list[dict]:
    """``n`` distinct problems of the chain task's split (its draws repeat problems)."""
    distinct = {p.prompt_id: p for p in itertools.islice(ChainTask().problems(split, seed=3), 20 * n)}
    return [{"id": f"{split}-{p.prompt_id}", "question": p.prompt, "final": p.answer}
            for p in list(distinct.values())[:n]]


@pytest.mark.slow
def test_hsd_run_trains_on_a_jsonl_file_scored_by_a_reward_plugin(tmp_path):
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in _rows("train", 64)))
    test.write_text("".join(json.dumps(r) + "\n" for r in _rows("test", 8)))
    (tmp_path / "my_reward.py").write_text(REWARD)
    run_dir = tmp_path / "run"
    overrides = ['actor.task="data"', f'data.train="{train}"', f'data.eval="{test}"', 'data.prompt_field="question"',
                 'data.answer_field="final"', f'data.reward="{tmp_path / "my_reward.py"}:final_answer"',
                 "actor.group_size=4", "learner.batch_groups=2", "learner.eval_every=2", "learner.eval_problems=8",
                 "learner.eval_samples=1"]
    out = subprocess.run([sys.executable, "-m", "services.apps.cli", "run", "--steps", "2", "--actors", "1",
                          "--run-dir", str(run_dir), *(x for o in overrides for x in ("--set", o))],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["groups"]["trained"] == 4
    assert any(r > 0 for r in summary["reward_mean_by_step"]), summary["reward_mean_by_step"]
    assert set(summary["eval_accuracy_by_step"]) == {"0", "2"}  # the eval file, before and after
    calls = (tmp_path / "my_reward.py.calls").read_text().splitlines()
    train_ids, test_ids = ({json.loads(line)["id"] for line in f.read_text().splitlines()} for f in (train, test))
    # the plug-in scored the actor's rollouts (2 steps × 2 groups × 4 samples at least) on
    # train rows and the learner's evaluations (8 eval-file problems × 1 sample, twice)
    assert len([i for i in calls if i in train_ids]) >= 2 * 2 * 4
    assert sorted(i for i in calls if i in test_ids) == sorted(2 * list(test_ids))
    assert set(calls) <= train_ids | test_ids
