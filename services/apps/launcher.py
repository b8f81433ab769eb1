"""``hsd run``: embedded Redis, the learner and K actors as separate processes on this machine.

The same entry points (``hsd learner``, ``hsd actor``) that Kubernetes runs; everything is
stopped by PID on exit or Ctrl-C. The run dir gets the resolved config, one log per
process, ``endpoints.json`` once everything is up, the checkpoints, the credit log and
``summary.json``.

Devices: :mod:`services.apps.devices` plans which GPUs each process sees.

Process lifecycle::

    redis ──► learner (publishes v0, writes state) ──► actors join ──► endpoints.json
      ...training: the learner exits after `steps`...
    actors: SIGTERM (each finishes its batch) ──► summary.json ──► redis stopped
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import Config, to_toml
from learner.curves import check_available
from services.apps.devices import DevicePlan, plan_devices, visible_gpus
from services.apps.progress import RunProgress
from services.errors import StartupError
from services.process import die_with_parent
from services.transport.redis_client import reachable
from services.transport.redis_server import ensure_redis
from services.transport.streams import GENERATED, Keys

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 300


class RunFailed(RuntimeError):
    """A process of the run died after it started (its log says why)."""


class RunDirInUse(RuntimeError):
    """The run dir already holds a run (its Redis data and checkpoints would mix in)."""


def fresh_run_dir(name: str) -> str:
    return f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def ensure_unused(run_dir: Path) -> None:
    used = [n for n in ("endpoints.json", "checkpoints", "redis") if (run_dir / n).exists()]
    if used:
        raise RunDirInUse(f"{run_dir} already holds a run ({', '.join(used)}); give another --run-dir, "
                          f"or continue it with `hsd run --resume {run_dir}`")


@dataclass(frozen=True)
class Placement:
    """Where the processes run. ``threads``: torch threads per process — left to itself,
    each process starts one per core, so a learner and K actors on one machine would
    oversubscribe it K+1 times over. ``cpus``: optional pinning (the pipeline benchmark
    keeps actors and learner on separate cores)."""

    learner_threads: int
    actor_threads: int
    learner_cpus: frozenset[int] | None = None
    actor_cpus: frozenset[int] | None = None

    @classmethod
    def shared(cls, actors: int, cores: int | None = None) -> Placement:
        """No pinning; half the cores' worth of threads to the learner, the rest split
        between the actors (at least one each)."""
        cores = cores or len(os.sched_getaffinity(0))
        learner = max(1, cores // 2)
        return cls(learner, max(1, (cores - learner) // max(actors, 1)))

    @classmethod
    def pinned(cls, learner_cpus: set[int], actor_cpus: set[int], actors: int) -> Placement:
        return cls(len(learner_cpus), max(1, len(actor_cpus) // max(actors, 1)),
                   frozenset(learner_cpus), frozenset(actor_cpus))

    def env(self, role: str) -> dict[str, str]:
        """Thread counts for a child; a value the user exported wins."""
        threads = str(self.learner_threads if role == "learner" else self.actor_threads)
        return {var: os.environ.get(var, threads) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}

    def preexec(self, role: str):
        cpus = self.learner_cpus if role == "learner" else self.actor_cpus

        def start() -> None:
            die_with_parent()
            if cpus:
                os.sched_setaffinity(0, cpus)

        return start


class Launcher:
    def __init__(self, config: Config, actors: int, model_path: str, placement: Placement | None = None,
                 show_progress: bool = True, devices: DevicePlan | None = None) -> None:
        check_available(config)  # before any process starts
        self.config = config
        self.show_progress = show_progress
        self.n_actors = actors
        self.model_path = model_path
        self.placement = placement or Placement.shared(actors)
        self.devices = devices or self._plan_devices()
        log.info("%s", self.devices.describe())
        self.run_dir = Path(config.run.dir).resolve()
        self.procs: dict[str, subprocess.Popen] = {}
        self.server = None

    def _plan_devices(self) -> DevicePlan:
        c = self.config
        try:
            return plan_devices(visible_gpus(), self.n_actors, learner_processes=c.learner.processes,
                                vllm=c.actor.engine == "vllm", vllm_memory=c.actor.vllm_gpu_memory_utilization,
                                learner_share=c.run.learner_gpu_share, learner_devices=c.run.learner_devices,
                                actor_devices=c.run.actor_devices)
        except ValueError as err:
            raise StartupError(str(err)) from None

    def process_settings(self, name: str) -> tuple[dict[str, str], list[str]]:
        """The environment and extra flags of one process of the plan: its devices and,
        for a vLLM actor on a shared GPU, its memory share."""
        if name == "learner":
            return self.devices.env("learner"), []
        index = int(name.rsplit("-", 1)[1])
        share = self.devices.vllm_memory[index]
        return (self.devices.env("actor", index),
                [] if share is None else ["--set", f"actor.vllm_gpu_memory_utilization={share}"])

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log_file = (self.run_dir / f"{name}.log").open("w")
        role = "learner" if name == "learner" else "actor"
        devices, flags = self.process_settings(name)
        args = [*args, *flags]
        # the Redis URL may hold a password: through the environment, not the command line (ps)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HSD_REDIS__URL": self.url, **self.placement.env(role),
               **devices, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # transformers' loading bars: not in the logs
        # own session (a terminal's Ctrl-C reaches the launcher, which stops them in order),
        # but never outliving the launcher, even if it is killed with -9
        proc = subprocess.Popen([*self._launcher(role), "-m", "services.apps.cli", *args], stdout=log_file,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, preexec_fn=self.placement.preexec(role))
        self.procs[name] = proc
        return proc

    def _launcher(self, role: str) -> list[str]:
        """The interpreter, or torchrun for a DeepSpeed learner (one process per rank)."""
        lc = self.config.learner
        if role == "learner" and lc.engine == "deepspeed":
            return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", str(lc.processes)]
        return [sys.executable]

    def _common(self, name: str) -> list[str]:
        return ["--config", str(self.run_dir / "config.toml"), "--set", f'run.dir="{self.run_dir}"',
                "--metrics-file", str(self.run_dir / f"{name}.metrics")]

    def _failure(self, name: str, code: int, when: str) -> str:
        """One line: the process's own one-line error (``hsd ROLE: …``) or the last line of
        its log, and where the whole log is."""
        log_path = self.run_dir / f"{name}.log"
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        said = next((line for line in reversed(lines) if line.startswith("hsd ")), None)
        last = said or (lines[-1] if lines else "(nothing logged)")
        return f"{name} exited with {code} {when}: {last} (log: {log_path})"

    def _wait_file(self, path: Path, proc: subprocess.Popen, name: str) -> str:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not path.exists():
            if proc.poll() is not None:
                raise StartupError(self._failure(name, proc.returncode, "while starting"))
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not start in {READY_TIMEOUT_S}s")
            time.sleep(0.1)
        return path.read_text().strip()

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Start the run's processes, wait for the learner, stop the actors, summarise.
        ``resume``: the run dir holds a stopped or killed run — its Redis data is loaded
        again (streams, pending entries, counters, versions), the learner resumes from its
        latest checkpoint, and fresh actors join."""
        started = time.monotonic()
        if not resume:
            ensure_unused(self.run_dir)
        # what the stopped run's processes left (their metrics URLs, its end): not this one's
        for stale in [*self.run_dir.glob("*.metrics"), self.run_dir / "summary.json",
                      self.run_dir / "learner-summary.json"]:
            stale.unlink(missing_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resolved = self.config.model_copy(deep=True)
        resolved.model.path = self.model_path  # every process loads the same folder
        config_file = self.run_dir / "config.toml"
        config_file.touch(mode=0o600)  # it may hold the weight-service token
        config_file.write_text(to_toml(resolved, mask_secrets=False))
        self.url, self.server = ensure_redis(self.config.redis.url, self.run_dir / "redis")
        client = reachable(self.url, self.config.redis.retry_seconds)
        keys = Keys(self.config.run.name)
        # a resumed run keeps its state (versions, lost ranges, counters); its old actors are gone
        client.delete(*((keys.actors, keys.actor_metrics) if resume else (keys.state, keys.actors, keys.actor_metrics)))
        try:
            learner = self._spawn("learner", ["learner", *self._common("learner"), *(["--resume"] if resume else [])])
            metrics = {"learner": self._wait_file(self.run_dir / "learner.metrics", learner, "learner")}
            for i in range(self.n_actors):
                name = f"actor-{i}"
                self._spawn(name, ["actor", *self._common(name), "--run", self.config.run.name, "--actor-id", name])
            for i in range(self.n_actors):
                name = f"actor-{i}"
                metrics[name] = self._wait_file(self.run_dir / f"{name}.metrics", self.procs[name], name)
            weights = client.hget(keys.state, "weights").decode()
            endpoints = {"redis": self.url, "run": self.config.run.name, "weights": weights, "metrics": metrics,
                         "config": str(self.run_dir / "config.toml"),
                         "pids": {name: p.pid for name, p in self.procs.items()}}
            path = self.run_dir / "endpoints.json"
            path.touch(mode=0o600)  # the Redis URL in it may hold a password (`hsd actor --join` reads it)
            path.write_text(json.dumps(endpoints, indent=2))
            log.info("run %s up: %s", self.config.run.name, self.run_dir / "endpoints.json")
            code = self._follow(learner)
            if code != 0:
                raise RunFailed(self._failure("learner", code, "during the run"))
            self._stop_actors()
            return self._summary(client, keys, time.monotonic() - started)
        finally:
            self.shutdown()

    def _follow(self, learner: subprocess.Popen) -> int:
        """Wait for the learner, showing the run's progress on the console if asked."""
        if not self.show_progress:
            return learner.wait()
        progress = RunProgress(self.run_dir, self.config.run.steps)
        try:
            while learner.poll() is None:
                progress.update()
                time.sleep(1.0)
        finally:
            progress.close()
        return learner.returncode

    def _stop_actors(self, timeout: float = 60.0) -> None:
        actors = {n: p for n, p in self.procs.items() if n.startswith("actor-") and p.poll() is None}
        for p in actors.values():
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, p in actors.items():
            try:
                p.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop on SIGTERM; killing it", name)
                p.kill()
                p.wait()

    def _summary(self, client, keys: Keys, wall: float) -> dict[str, Any]:
        learner = json.loads((self.run_dir / "learner-summary.json").read_text())
        loop = learner["loop_seconds"]
        generated = int(client.hget(keys.state, GENERATED) or 0)
        in_flight = int(client.xlen(keys.rollouts))
        summary = {
            "steps": learner["steps"], "final_version": learner["final_version"], "method": learner["method"],
            "groups": {"generated": generated, "trained": learner["trained_groups"],
                       "dropped": learner["dropped"], "in_flight_at_exit": in_flight,
                       "prompts_not_generated_at_exit": int(client.xlen(keys.prompts))},
            "reward_mean_by_step": learner["reward_mean_by_step"],
            "eval_accuracy_by_step": learner["eval_accuracy_by_step"],
            **{key: learner[key] for key in ("eval_by_length_by_step", "eval_reference_logprob_by_step")
               if learner[key]},
            "samples": {"attempts": learner["trained_samples"], "revisions": learner["trained_revisions"]},
            **({"revision_success_by_step": learner["revision_success_by_step"]}
               if learner["revision_success_by_step"] else {}),
            "staleness_mean": learner["staleness_mean"], "peer_is_reference": learner["peer_is_reference"],
            "credit": learner["credit"],
            "actor_versions": {k.decode(): int(v) for k, v in client.hgetall(keys.actors).items()},
            "throughput": {"samples_per_second": round(learner["trained_samples"] / loop, 3) if loop else None,
                           "learner_idle_fraction": round(learner["idle_seconds"] / loop, 3) if loop else None,
                           "learner_seconds_per_version": learner["seconds_per_version"]},
            "wall_seconds": round(wall, 2),
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def shutdown(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.server is not None:
            self.server.stop()
