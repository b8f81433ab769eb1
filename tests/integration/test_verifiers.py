"""Verifiers on real data, and the code sandbox against escapes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from core.tasks import make_task
from core.tasks.code import CodeVerifier
from core.tasks.sandbox import Limits, backend_works, make_sandbox


@pytest.fixture(scope="module")
def humaneval():
    # Correctness, not speed, is under test: a wall limit far above any canonical
    # solution's run time keeps a stalled shared CI machine from failing one.
    return make_task("humaneval", timeout_s=60)


def test_humaneval_canonical_solutions_pass_and_truncated_ones_fail(humaneval):
    problems = [humaneval.problem(f"HumanEval/{i}") for i in range(164)]
    scores = [humaneval.score(p.reference, p) for p in problems]
    failed = {p.prompt_id: s.error for p, s in zip(problems, scores, strict=True) if not s.success}
    assert not failed, failed
    truncated = [humaneval.score(p.reference[: len(p.reference) // 2], p) for p in problems[:40]]
    assert not any(s.success for s in truncated)
    assert all(s.error for s in truncated)


def test_gsm8k_answers(tmp_path):
    task = make_task("gsm8k")
    problems = list(task.by_id.values())
    assert len(problems) == 100
    for p in problems:
        assert task.score(f"Reasoning...\n#### {p.answer}", p).success, p.prompt_id
        assert not task.score(f"#### {int(float(p.answer)) + 1}", p).success, p.prompt_id
    assert task.score("The answer is $\\boxed{18}$.", problems[0].__class__(
        "x", "q", "18")).success


def test_gym_chain_sum_scorer():
    pytest.importorskip("reasoning_gym")
    task = make_task("gym:chain_sum")
    p = next(task.problems("train"))
    assert task.score(f"steps... #### {p.answer}", p).success
    assert not task.score("#### 123456789", p).success
    assert task.score(f"Adding up...\nThe final answer is {p.answer}.", p).success
    assert not task.score(f"The final answer is {p.answer}1.", p).success


# every isolating backend this machine has (bwrap where installed, unshare as root)
BACKENDS = [b for b in ("bwrap", "unshare") if backend_works(b)] or ["none"]


@pytest.fixture(scope="module", params=BACKENDS)
def sandbox(request):
    if request.param == "none":
        pytest.skip("no isolating sandbox backend on this machine")
    return make_sandbox(Limits(wall_s=5, cpu_s=5, memory_mb=512, nproc=32, fsize_mb=1,
                               output_bytes=64 << 10), backend=request.param)


ESCAPES = {
    "write outside the work dir": "open('/etc/hsd-escape', 'w').write('x')",
    "open a socket": "import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)",
    "fork bomb": "import os\nwhile True:\n    os.fork()",
    "memory bomb": "x = bytearray(8 << 30)",
    "infinite loop": "while True:\n    pass",
    "huge output": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
    "huge file": "open('big', 'wb').write(b'x' * (64 << 20))",
    "read the host's secrets from env": "import os; assert 'HSD_SECRET' in os.environ",
}


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_sandbox_escapes_score_zero_with_no_side_effect(name, sandbox, tmp_path, monkeypatch):
    monkeypatch.setenv("HSD_SECRET", "s3cret")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    code = ESCAPES[name].format(port=listener.getsockname()[1])
    verifier = CodeVerifier(sandbox)
    score = verifier.verify(code, {"test": "def check(f):\n    pass", "entry_point": "print"})
    assert score.reward == 0.0 and not score.success and score.error
    assert not os.path.exists("/etc/hsd-escape")
    with pytest.raises(TimeoutError):
        listener.accept()  # nothing got through
    listener.close()
    assert _no_process_of(65534), "a sandboxed process outlived its run"


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_sandbox_sees_no_host_data_and_keeps_no_writes(backend, tmp_path):
    """Host files (this test's own source, a file in the caller's dir, /var, /run…) are out
    of sight, and what the program writes to /tmp or /dev/shm is gone with the run."""
    if backend == "none":
        pytest.skip("no isolating sandbox backend on this machine")
    sandbox = make_sandbox(Limits(wall_s=60), backend=backend)
    marker = tmp_path / "host-file"
    marker.write_text("host")
    hidden = [str(marker), __file__, *(p for p in ("/var", "/home", "/srv", "/run", "/opt") if os.path.exists(p))]
    shm = f"/dev/shm/hsd-sandbox-{os.getpid()}"
    program = (f"import os\n"
               f"for path in {hidden!r}:\n"
               f"    assert not os.path.exists(path), path\n"
               f"open({shm!r}, 'w').write('x')\nopen('/tmp/kept', 'w').write('x')\n"
               f"print('ran')")
    result = sandbox.run_python(program)
    assert result.ok and result.stdout.strip() == b"ran", result
    assert not os.path.exists(shm)
    assert sandbox.run_python("import os\nassert not os.listdir('/tmp') and not os.listdir('/dev/shm')").ok


def _no_process_of(uid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not subprocess.run(["pgrep", "-u", str(uid)], capture_output=True).stdout.split():
            return True
        time.sleep(0.05)
    return False


def test_a_harmless_program_passes():
    # the escapes' 5 s wall is too tight for a program that must pass on a loaded machine
    verifier = CodeVerifier(make_sandbox(Limits(wall_s=60)))
    assert verifier.verify("def f():\n    return 2",
                           {"test": "def check(g):\n    assert g() == 2", "entry_point": "f"}).success
    nested = "def f():\n    return {'a': [1, (2.5, None)], 'b': {True, 'x'}}"
    assert verifier.verify(nested, {"test": "def check(g):\n    assert g()['a'][0] == 1", "entry_point": "f"}).success


HACKS = {  # wrong solutions (the right answer is 2) that exit 0 or pass an == test
    "exit before the tests": "def f():\n    return 3\nimport sys\nsys.exit(0)",
    "hard exit before the tests": "def f():\n    return 3\nimport os\nos._exit(0)",
    "exit() builtin": "def f():\n    return 3\nexit()",
    "an object equal to everything": "class Any:\n    def __eq__(self, other):\n        return True\n"
                                     "def f():\n    return Any()",
    "an int subclass equal to everything": "class Int(int):\n    def __eq__(self, other):\n        return True\n"
                                           "def f():\n    return Int(3)",
    "exit from inside the test": "def f():\n    import sys\n    sys.exit(0)",
}


@pytest.mark.parametrize("name", sorted(HACKS))
def test_reward_hacks_score_zero(name):
    verifier = CodeVerifier(make_sandbox(Limits(wall_s=60)))
    score = verifier.verify(HACKS[name], {"test": "def check(g):\n    assert g() == 2", "entry_point": "f"})
    assert score.reward == 0.0 and not score.success and score.error, score


def test_hsd_verify_cli_writes_a_line_per_input_and_a_summary(tmp_path, humaneval):
    rows = []
    for i in (0, 1, 2):
        p = humaneval.problem(f"HumanEval/{i}")
        rows.append({"prompt": p.fields["prompt"], "completion": p.reference, "test": p.fields["test"],
                     "entry_point": p.fields["entry_point"]})
    rows[1]["completion"] = "    return None\n"
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    out = tmp_path / "out.jsonl"
    done = subprocess.run([sys.executable, "-m", "services.apps.cli", "verify", "--task", "code", "--input", str(src),
                           "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line.get("success") for line in lines[:4]] == [True, False, True, False]
    assert "not JSON" in lines[3]["error"]
    assert lines[4]["summary"]["n"] == 4 and lines[4]["summary"]["successes"] == 2
    bad = subprocess.run([sys.executable, "-m", "services.apps.cli", "verify", "--task", "nope", "--input", str(src)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown task" in bad.stderr


def test_hsd_verify_scores_with_a_runs_own_reward_plugin(tmp_path):
    (tmp_path / "reward.py").write_text("def score(completion, fields):\n"
                                        "    return {'reward': float(completion.strip() == fields['answer'])}\n")
    (tmp_path / "train.jsonl").write_text("".join(f'{{"id": "{n}", "prompt": "{n}+1", "answer": "{n + 1}"}}\n'
                                                  for n in range(4)))
    (tmp_path / "job.toml").write_text(f'[actor]\ntask = "data"\n[data]\ntrain = "{tmp_path / "train.jsonl"}"\n'
                                       f'reward = "{tmp_path / "reward.py"}:score"\n')
    src = tmp_path / "in.jsonl"
    src.write_text('{"completion": "2", "answer": "2"}\n{"completion": "3", "answer": "2"}\n')
    done = subprocess.run([sys.executable, "-m", "services.apps.cli", "verify", "--task", "data", "--config",
                           str(tmp_path / "job.toml"), "--input", str(src)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(line["reward"], line["success"]) for line in lines[:2]] == [(1.0, True), (0.0, False)]
    assert lines[2]["summary"]["successes"] == 1
