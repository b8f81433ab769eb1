"""`hsd run` as a user runs it: a few steps, a live scrape, injected garbage, a kill -9."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request

import pytest
import redis
import torch

from services.transport.streams import ROLLOUT_FIELD, Keys
from tests.waiting import wait_until

DESIGN_METRICS = {
    "actor": ["hsd_actor_groups_total", "hsd_actor_samples_total", "hsd_actor_tokens_total",
              "hsd_actor_generate_seconds", "hsd_actor_reward", "hsd_actor_policy_version",
              "hsd_actor_weight_sync_seconds", "hsd_actor_verifier_errors_total", "hsd_actor_truncated_samples_total"],
    "learner": ["hsd_replay_groups_ingested_total", "hsd_replay_dropped_total", "hsd_replay_buffered_groups",
                "hsd_replay_peer_coverage", "hsd_queue_lag_entries", "hsd_learner_step",
                "hsd_learner_policy_version", "hsd_learner_step_seconds", "hsd_learner_tokens_per_second",
                "hsd_learner_loss", "hsd_learner_staleness_versions", "hsd_learner_importance_ratio",
                "hsd_learner_is_masked_fraction", "hsd_learner_teacher_kl", "hsd_learner_idle_fraction",
                "hsd_learner_grad_norm", "hsd_learner_learning_rate", "hsd_learner_response_tokens_mean",
                "hsd_credit_abs_mean", "hsd_credit_divergence_mass", "hsd_credit_peak_offset_tokens",
                "hsd_credit_silence_fraction", "hsd_weights_version", "hsd_weights_publish_seconds",
                "hsd_weights_bytes_sent_total", "hsd_learner_truncated_fraction", "hsd_learner_zero_std_group_fraction",
                "hsd_learner_checkpoint_age_seconds", "hsd_learner_gpu_memory_bytes", "hsd_redis_used_memory_bytes"],
}


def exported_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name + "_total" if kind == "counter" and not name.endswith("_total") else name)
    return names


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        return r.read().decode()


STEP_LIMIT = 1000  # never reached: the test stops the run itself once every fault is in
STEPS_AFTER_KILL = 4


def _version(client, keys) -> int:
    return int(client.hget(keys.state, "version") or 0)


@pytest.mark.slow
def test_hsd_run_end_to_end(tmp_path, tiny_model_dir):
    """Faults are injected on events of the run (a version reached), and the run is held
    (a step limit it never reaches) until the test has seen their effect and stops the
    learner with SIGTERM, as a user would: no step count is expected in any time."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "services.apps.cli", "run", "--steps", str(STEP_LIMIT), "--actors", "2",
           "--run-dir", str(run_dir),
           "--set", f'model.path="{tiny_model_dir}"', "--set", "actor.group_size=4",
           "--set", "model.max_response_tokens=16", "--set", "learner.checkpoint_every=3",
           "--set", "learner.max_staleness=3", "--set", "redis.claim_timeout_s=2",
           "--set", "learner.credit_log_every=2", "--set", "learner.lr=1e-3", "--set", "learner.batch_groups=2",
           "--set", "learner.eval_every=5", "--set", "learner.eval_problems=8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    learner_log = (run_dir / "learner.log").read_text
    try:
        wait_until(lambda: proc.poll() is not None or (run_dir / "endpoints.json").exists(), 240,
                   "the run never wrote endpoints.json")
        assert proc.poll() is None, proc.stdout.read()
        endpoints = json.loads((run_dir / "endpoints.json").read_text())
        assert set(endpoints["metrics"]) == {"learner", "actor-0", "actor-1"}
        client = redis.Redis.from_url(endpoints["redis"])
        keys = Keys(endpoints["run"])
        wait_until(lambda: _version(client, keys) >= 1, 240, lambda: f"no first step: {learner_log()}")
        # garbage behind at most (η+1)·B groups: the learner reaches it well before the end
        for raw in (b"\xc1 garbage", b"\x80"):
            client.xadd(keys.rollouts, {ROLLOUT_FIELD: raw})
        client.xadd(keys.rollouts, {b"wrong-field": b"x"})
        # a couple of steps, so that every metric has been touched
        wait_until(lambda: _version(client, keys) >= 2, 240, lambda: f"no second step: {learner_log()}")
        for role, url in endpoints["metrics"].items():
            missing = set(DESIGN_METRICS["actor" if role.startswith("actor") else "learner"]) - \
                exported_names(_scrape(url))
            assert not missing, f"{role} does not export {sorted(missing)}"
        # an actor that joins the running run registers its metrics URL: `hsd top` finds it
        joined = subprocess.Popen([sys.executable, "-m", "services.apps.cli", "actor", "--join", str(run_dir),
                                   "--actor-id", "joined", "--set", "metrics.port=0"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: client.hexists(keys.actor_metrics, "joined") or joined.poll() is not None, 240,
                   "the joined actor never registered its metrics")
        top = subprocess.run([sys.executable, "-m", "services.apps.cli", "top", str(run_dir), "--once",
                              "--interval", "1"], capture_output=True, text=True, timeout=60)
        joined.send_signal(signal.SIGTERM)  # it finishes its batch and leaves; its entry goes with it
        assert joined.wait(timeout=120) == 0
        assert not client.hexists(keys.actor_metrics, "joined")
        assert top.returncode == 0, top.stderr
        assert "learner  step" in top.stdout and "actor-0" in top.stdout and "actor-1" in top.stdout
        assert re.search(r"^joined +\d+ ", top.stdout, re.M), top.stdout
        assert re.search(r"^progress step [1-9]\d*/1000", top.stdout, re.M), top.stdout
        assert "\033[" not in top.stdout  # no screen control codes into a pipe
        assert "(unreachable)" not in top.stdout
        os.kill(endpoints["pids"]["actor-1"], signal.SIGKILL)
        killed_at = _version(client, keys)
        # the run goes on without the killed actor (its claimed prompts reclaimed after 2 s)
        wait_until(lambda: _version(client, keys) >= max(killed_at + STEPS_AFTER_KILL, 6), 400,
                   lambda: f"the run stalled after the kill at version {killed_at}: {learner_log()}")
        os.kill(endpoints["pids"]["learner"], signal.SIGTERM)  # the user's stop: checkpoint, summary, exit 0
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the launcher stops its children by PID
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert proc.returncode == 0, out
    summary = json.loads((run_dir / "summary.json").read_text())
    steps = summary["steps"]
    assert steps >= killed_at + STEPS_AFTER_KILL and summary["final_version"] == steps
    g = summary["groups"]
    injected = 3
    assert g["dropped"]["malformed"] == injected
    assert g["generated"] + injected == g["trained"] + sum(g["dropped"].values()) + g["in_flight_at_exit"]
    assert g["trained"] == steps * 2  # steps × batch_groups
    assert summary["actor_versions"]["actor-0"] > 0  # it loaded newer weights than it started with
    assert len(summary["reward_mean_by_step"]) == steps
    # held-out accuracy before the first step and every eval_every steps (8 problems × 4
    # samples: multiples of 1/32); a stop does not wait for a final evaluation
    assert set(summary["eval_accuracy_by_step"]) == {str(k) for k in range(0, steps + 1, 5)}
    assert all(abs(a * 32 - round(a * 32)) < 1e-6 for a in summary["eval_accuracy_by_step"].values())
    assert summary["throughput"]["samples_per_second"] > 0 and 0 <= summary["throughput"]["learner_idle_fraction"] < 1
    assert set(summary) >= {"steps", "final_version", "method", "groups", "reward_mean_by_step", "staleness_mean",
                            "credit", "wall_seconds"}
    credit_lines = [json.loads(line) for line in (run_dir / "credit.jsonl").read_text().splitlines()]
    assert credit_lines and {"tokens", "delta", "divergence", "reward", "peer"} <= set(credit_lines[0])
    assert len(credit_lines[0]["tokens"]) == len(credit_lines[0]["delta"])
    for name in ("learner.log", "actor-0.log", "actor-1.log", "config.toml"):
        assert (run_dir / name).exists()
    # the console: plain progress lines (stdout is a pipe here), the model's folder at the end
    assert re.search(r"^step \d+/1000 \| \d+s elapsed, ~\d+s left \| [\d.]+ samples/s \| reward", out, re.M), out
    assert f"trained model (a Hugging Face folder): {run_dir}/checkpoints/step-{steps:06d}/model" in out
    # every step and evaluation in metrics.jsonl; no progress bar's carriage returns in a log
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, steps + 1))
    assert {str(r["step"]) for r in records if r["kind"] == "eval"} == set(summary["eval_accuracy_by_step"])
    assert all("grad_norm" in r and "reward_mean" in r for r in records if r["kind"] == "step")
    assert not any("\r" in (run_dir / name).read_text() for name in ("learner.log", "actor-0.log"))
    # the same curves as TensorBoard event files, read back by TensorBoard's own reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(run_dir / "tensorboard"))
    board.Reload()
    rewards = {e.step: e.value for e in board.Scalars("train/reward_mean")}
    assert rewards == pytest.approx({r["step"]: r["reward_mean"] for r in records if r["kind"] == "step"})
    assert {str(e.step) for e in board.Scalars("eval/accuracy")} == set(summary["eval_accuracy_by_step"])
    from transformers import AutoModelForCausalLM

    # the final checkpoint (taken at the stop) is an HF folder holding the trained weights
    last = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    assert last.name == f"step-{steps:06d}"
    trained = AutoModelForCausalLM.from_pretrained(last / "model").state_dict()
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert trained.keys() == initial.keys() and any(not torch.equal(v, initial[k]) for k, v in trained.items())


def test_hsd_run_refuses_a_run_dir_that_holds_a_run(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    out = subprocess.run([sys.executable, "-m", "services.apps.cli", "run", "--run-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "already holds a run (checkpoints)" in out.stderr


@pytest.mark.slow
@pytest.mark.deepspeed
def test_a_deepspeed_learner_on_two_ranks(tmp_path, tiny_model_dir):
    """`hsd run` with the DeepSpeed engine: torchrun starts two gloo ranks (ZeRO-2); rank 0
    serves, both train; the checkpoints hold both ranks' partitions and whole HF weights."""
    pytest.importorskip("deepspeed")
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "services.apps.cli", "run", "--steps", "4", "--actors", "1", "--run-dir", str(run_dir),
         "--set", f'model.path="{tiny_model_dir}"', "--set", 'learner.engine="deepspeed"',
         "--set", "learner.processes=2", "--set", "actor.group_size=4", "--set", "model.max_response_tokens=12",
         "--set", "learner.batch_groups=2", "--set", "learner.checkpoint_every=2", "--set", "learner.lr=1e-3",
         "--set", "learner.eval_every=0"], capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_version"] == 4 and summary["groups"]["trained"] == 8
    assert max(summary["actor_versions"].values()) >= 1
    last = run_dir / "checkpoints" / "step-000004"
    partitions = sorted(p.name for p in (last / "deepspeed" / "state").glob("*optim_states.pt"))
    assert len(partitions) == 2 and "rank_0" in partitions[0] and "rank_1" in partitions[1]
    trained = AutoModelForCausalLM.from_pretrained(last / "model").state_dict()
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert trained.keys() == initial.keys()
    assert any(not torch.equal(v, initial[k]) for k, v in trained.items())
