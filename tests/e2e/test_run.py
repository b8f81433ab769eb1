"""`hsd run` as a user runs it: a few steps, a live scrape, injected garbage, a kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import redis
import torch

from services.streams import ROLLOUT_FIELD, Keys

DESIGN_METRICS = {
    "actor": ["hsd_actor_groups_total", "hsd_actor_samples_total", "hsd_actor_tokens_total",
              "hsd_actor_generate_seconds", "hsd_actor_reward", "hsd_actor_policy_version",
              "hsd_actor_weight_sync_seconds"],
    "learner": ["hsd_replay_groups_ingested_total", "hsd_replay_dropped_total", "hsd_replay_buffered_groups",
                "hsd_replay_peer_coverage", "hsd_queue_lag_entries", "hsd_learner_step",
                "hsd_learner_policy_version", "hsd_learner_step_seconds", "hsd_learner_tokens_per_second",
                "hsd_learner_loss", "hsd_learner_staleness_versions", "hsd_learner_importance_ratio",
                "hsd_learner_is_masked_fraction", "hsd_learner_teacher_kl", "hsd_learner_idle_fraction",
                "hsd_credit_abs_mean", "hsd_credit_divergence_mass", "hsd_credit_peak_offset_tokens",
                "hsd_credit_silence_fraction", "hsd_weights_version", "hsd_weights_publish_seconds",
                "hsd_weights_bytes_sent_total"],
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


STEPS = 20


@pytest.mark.slow
def test_hsd_run_end_to_end(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "services.cli", "run", "--steps", str(STEPS), "--actors", "2", "--run-dir", str(run_dir),
           "--set", f'model.path="{tiny_model_dir}"', "--set", "actor.group_size=4",
           "--set", "model.max_response_tokens=16", "--set", "learner.checkpoint_every=3",
           "--set", "learner.max_staleness=3", "--set", "redis.claim_timeout_s=2",
           "--set", "learner.credit_log_every=2", "--set", "learner.lr=1e-3", "--set", "learner.batch_groups=2",
           "--set", "learner.eval_every=10", "--set", "learner.eval_problems=8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "endpoints.json").exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        endpoints = json.loads((run_dir / "endpoints.json").read_text())
        assert set(endpoints["metrics"]) == {"learner", "actor-0", "actor-1"}
        client = redis.Redis.from_url(endpoints["redis"])
        keys = Keys(endpoints["run"])
        while int(client.hget(keys.state, "version") or 0) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # garbage behind at most (η+1)·B groups: the learner reaches it well before the end
        for raw in (b"\xc1 garbage", b"\x80"):
            client.xadd(keys.rollouts, {ROLLOUT_FIELD: raw})
        client.xadd(keys.rollouts, {b"wrong-field": b"x"})
        # wait for a couple of steps, so that every metric has been touched
        while int(client.hget(keys.state, "version") or 0) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        for role, url in endpoints["metrics"].items():
            missing = set(DESIGN_METRICS["actor" if role.startswith("actor") else "learner"]) - \
                exported_names(_scrape(url))
            assert not missing, f"{role} does not export {sorted(missing)}"
        top = subprocess.run([sys.executable, "-m", "services.cli", "top", str(run_dir), "--once", "--interval", "1"],
                             capture_output=True, text=True, timeout=60)
        assert top.returncode == 0, top.stderr
        assert "learner  step" in top.stdout and "actor-0" in top.stdout and "actor-1" in top.stdout
        assert "(unreachable)" not in top.stdout
        assert int(client.hget(keys.state, "version")) < STEPS, "the run ended before the kill"
        os.kill(endpoints["pids"]["actor-1"], signal.SIGKILL)
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
    assert summary["steps"] == STEPS and summary["final_version"] == STEPS
    g = summary["groups"]
    injected = 3
    assert g["dropped"]["malformed"] == injected
    assert g["generated"] + injected == g["trained"] + sum(g["dropped"].values()) + g["in_flight_at_exit"]
    assert g["trained"] == STEPS * 2  # steps × batch_groups
    assert summary["actor_versions"]["actor-0"] > 0  # it loaded newer weights than it started with
    assert len(summary["reward_mean_by_step"]) == STEPS
    # held-out accuracy before the first step and every eval_every steps (8 problems × 4 samples)
    assert set(summary["eval_accuracy_by_step"]) == {"0", "10", "20"}
    assert all(abs(a * 32 - round(a * 32)) < 0.01 and 0 <= a <= 1 for a in summary["eval_accuracy_by_step"].values())
    assert summary["throughput"]["samples_per_second"] > 0 and 0 <= summary["throughput"]["learner_idle_fraction"] < 1
    assert set(summary) >= {"steps", "final_version", "method", "groups", "reward_mean_by_step", "staleness_mean",
                            "credit", "wall_seconds"}
    credit_lines = [json.loads(line) for line in (run_dir / "credit.jsonl").read_text().splitlines()]
    assert credit_lines and {"tokens", "delta", "divergence", "reward", "peer"} <= set(credit_lines[0])
    assert len(credit_lines[0]["tokens"]) == len(credit_lines[0]["delta"])
    assert (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir())
    for name in ("learner.log", "actor-0.log", "actor-1.log", "config.toml"):
        assert (run_dir / name).exists()
    from transformers import AutoModelForCausalLM

    last = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    assert AutoModelForCausalLM.from_pretrained(last / "model") is not None


def test_hsd_run_refuses_a_run_dir_that_holds_a_run(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    out = subprocess.run([sys.executable, "-m", "services.cli", "run", "--run-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "already holds a run (checkpoints)" in out.stderr


@pytest.mark.slow
def test_srt_run_then_an_sdzero_run_from_its_checkpoint(tmp_path, tiny_model_dir):
    """SD-Zero's two phases as a user runs them: `srt` gives the model its reviser role,
    then `sdzero` starts from the srt checkpoint (an ordinary Hugging Face folder)."""
    common = ["--actors", "1", "--set", "actor.group_size=4", "--set", "model.max_response_tokens=12",
              "--set", "learner.checkpoint_every=2", "--set", "learner.lr=1e-3", "--set", "learner.batch_groups=2",
              "--set", "learner.eval_every=0"]

    def run(method: str, model: str, run_dir) -> dict:
        out = subprocess.run([sys.executable, "-m", "services.cli", "run", "--method", method, "--steps", "3",
                              "--run-dir", str(run_dir), "--set", f'model.path="{model}"', *common],
                             capture_output=True, text=True, timeout=400)
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads((run_dir / "summary.json").read_text())

    srt = run("srt", str(tiny_model_dir), tmp_path / "srt")
    assert srt["method"] == "srt" and srt["final_version"] == 3
    # every sample came with a scored revision (the untrained model's are all rejected, so
    # there was nothing to train on: the per-method step test trains on accepted ones)
    assert len(srt["revision_success_by_step"]) == 3
    assert all(0.0 <= r <= 1.0 for r in srt["revision_success_by_step"])
    srt_model = sorted((tmp_path / "srt" / "checkpoints").glob("step-*"))[-1] / "model"
    sdzero = run("sdzero", str(srt_model), tmp_path / "sdzero")
    assert sdzero["method"] == "sdzero" and sdzero["final_version"] == 3
    assert f'path = "{srt_model}"' in (tmp_path / "sdzero" / "config.toml").read_text()


@pytest.mark.slow
@pytest.mark.deepspeed
def test_a_deepspeed_learner_on_two_ranks(tmp_path, tiny_model_dir):
    """`hsd run` with the DeepSpeed engine: torchrun starts two gloo ranks (ZeRO-2); rank 0
    serves, both train; the checkpoints hold both ranks' partitions and whole HF weights."""
    pytest.importorskip("deepspeed")
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "run", "--steps", "4", "--actors", "1", "--run-dir", str(run_dir),
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
