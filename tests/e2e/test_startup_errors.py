"""A process that cannot start says why in one line naming the setting, and exits 2: no
traceback (a missing model, Redis out of reach, a port in use; `hsd run` passes on the
line of the process that failed)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from services.net import free_port
from services.transport.redis_server import EmbeddedRedis


def _hsd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.apps.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _one_line_exit_2(out: subprocess.CompletedProcess, command: str, *needles: str) -> str:
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    (line,) = [x for x in out.stderr.splitlines() if x.startswith(f"hsd {command}:")]
    assert all(n in line for n in needles), line
    return line


@pytest.fixture()
def busy_port():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


def test_a_missing_model_folder(tmp_path):
    out = _hsd("run", "--run-dir", str(tmp_path / "run"), "--set", f'model.path="{tmp_path / "nowhere"}"')
    _one_line_exit_2(out, "run", "model.path:", "not a model folder")
    assert not (tmp_path / "run").exists()  # nothing was started


def test_a_hub_id_that_cannot_be_fetched(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache, and no hub from this machine
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = _hsd("run", "--run-dir", str(tmp_path / "run"), "--set", 'model.path="someone/no-such-model"')
    _one_line_exit_2(out, "run", "model.path: 'someone/no-such-model'", "cannot be fetched from the hub here")
    assert not (tmp_path / "run").exists()


def test_redis_out_of_reach(tiny_model_dir):
    port = free_port()  # nothing listens there
    out = _hsd("learner", "--set", f'redis.url="redis://127.0.0.1:{port}/0"', "--set", "redis.retry_seconds=1",
               "--set", f'model.path="{tiny_model_dir}"', "--set", "metrics.enabled=false")
    _one_line_exit_2(out, "learner", "redis.url:", f"127.0.0.1:{port}", "did not answer within 1s")


@pytest.mark.parametrize("setting", ["metrics.port", "weights.port"])
def test_a_port_in_use(setting, busy_port, tiny_model_dir, tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as redis:
        out = _hsd("learner", "--set", f'redis.url="{redis.url}"', "--set", f'model.path="{tiny_model_dir}"',
                   "--set", f'run.dir="{tmp_path / "run"}"', "--set", f"{setting}={busy_port}")
    _one_line_exit_2(out, "learner", f"{setting}:", f"127.0.0.1:{busy_port}")


def test_hsd_run_passes_on_the_failing_process_line(busy_port, tmp_path):
    out = _hsd("run", "--run-dir", str(tmp_path / "run"), "--set", f"weights.port={busy_port}", "--steps", "1")
    line = _one_line_exit_2(out, "run", "learner exited with 2 while starting", "weights.port:", "learner.log")
    assert str(tmp_path / "run" / "learner.log") in line


@pytest.mark.parametrize("endpoints", [None, "{not json", '{"run": "hsd"}'])
def test_an_actor_joining_a_dir_that_holds_no_run(tmp_path, endpoints):
    if endpoints is not None:
        (tmp_path / "endpoints.json").write_text(endpoints)
    _one_line_exit_2(_hsd("actor", "--join", str(tmp_path)), "actor", f"--join {tmp_path}:",
                     "no endpoints.json there" if endpoints is None else "is not a run's endpoints")


def test_plot_and_compare_without_matplotlib_say_so(tmp_path):
    """matplotlib hidden from the interpreter (a None entry in sys.modules fails its import)."""
    (tmp_path / "metrics.jsonl").write_text("")
    for command in (["plot", str(tmp_path)], ["compare", "--quick", "--out", str(tmp_path / "cmp")]):
        out = subprocess.run([sys.executable, "-c", "import sys; sys.modules['matplotlib'] = None; "
                              "from services.apps.cli import main; sys.exit(main(sys.argv[1:]))", *command],
                             capture_output=True, text=True, timeout=120)
        _one_line_exit_2(out, command[0], "the figures need matplotlib: pip install matplotlib")
    assert not (tmp_path / "cmp").exists()  # compare stopped before any run


def test_a_data_row_that_breaks_the_mapping_stops_the_run_in_one_line(tmp_path):
    """The first row passes the check when the config is read; the third, without an
    answer, fails when the learner loads the task — one line naming the field and the row."""
    train = tmp_path / "train.jsonl"
    train.write_text('{"id": "a", "prompt": "1+1", "answer": "2"}\n{"id": "b", "prompt": "2+2", "answer": "4"}\n'
                     '{"id": "c", "prompt": "3+3"}\n')
    out = _hsd("run", "--run-dir", str(tmp_path / "run"), "--steps", "1", "--set", 'actor.task="data"',
               "--set", f'data.train="{train}"')
    _one_line_exit_2(out, "run", "learner exited with 2 while starting", "data.answer_field: row c has no 'answer'")
