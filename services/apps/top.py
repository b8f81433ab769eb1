"""``hsd top RUN_DIR [--interval S] [--once]``: a live terminal view of a run, scraped from
the Prometheus endpoints its endpoints.json lists, plus the run dir's ``metrics.jsonl``
(step N/M, ETA, held-out accuracy). Rates come from counter differences over the last
``WINDOW_S`` seconds of scrapes. When the run has ended (its summary.json exists) the view
says so and ``hsd top`` exits."""

from __future__ import annotations

import json
import sys
import time
import tomllib
import urllib.request
from collections import deque
from pathlib import Path

import redis
from prometheus_client.parser import text_string_to_metric_families

from core.config import masked_url
from learner.step_log import StepLogTail
from services.transport.streams import Keys

WINDOW_S = 10.0  # rates over this window of scrapes: one 2-s gap can hold no completed batch

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, timeout: float = 3.0) -> Samples | None:
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=timeout) as r:
            text = r.read().decode()
    except OSError:
        return None
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples | None, name: str, **labels: str) -> float | None:
    if samples is None:
        return None
    return samples.get((name, tuple(sorted(labels.items()))))


def hist_mean(samples: Samples | None, name: str) -> float | None:
    total, count = value(samples, name + "_sum"), value(samples, name + "_count")
    return total / count if total is not None and count else None


def hist_quantile(samples: Samples | None, name: str, q: float = 0.5) -> float | None:
    """The upper bound of the bucket holding the q-quantile (for histograms without a _sum:
    the client omits it when buckets can be negative)."""
    if samples is None:
        return None
    buckets = sorted((float(dict(labels)["le"]), v) for (n, labels), v in samples.items() if n == name + "_bucket")
    total = buckets[-1][1] if buckets else 0
    for bound, cumulative in buckets:
        if total and cumulative >= q * total:
            return bound
    return None


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


class RunFile:
    """The run dir's step records, read as they grow: step N/M, ETA, latest held-out."""

    def __init__(self, run_dir: Path) -> None:
        self.tail = StepLogTail(run_dir)
        try:
            self.total = tomllib.loads((Path(run_dir) / "config.toml").read_text())["run"]["steps"]
        except (OSError, KeyError, ValueError):
            self.total = None

    def line(self) -> str:
        self.tail.poll()
        recent, step = self.tail.recent, self.tail.step
        out = f"progress step {step}/{_fmt(self.total, '.0f')}"
        if len(recent) >= 2 and self.total:
            per_step = (recent[-1]["time"] - recent[0]["time"]) / max(recent[-1]["step"] - recent[0]["step"], 1)
            out += f"  ETA {max(self.total - step, 0) * per_step:.0f}s ({per_step:.2f} s/step, last {len(recent)})"
        if self.tail.held_out is not None:
            out += f"  held-out {self.tail.held_out['accuracy']:.3f} at step {self.tail.held_out['step']}"
        return out


def render(endpoints: dict, now: dict[str, Samples | None], before: dict[str, Samples | None], dt: float,
           progress: str = "") -> str:
    def rate(name: str, metric: str) -> float | None:
        a, b = value(now.get(name), metric), value(before.get(name), metric)
        return (a - b) / dt if a is not None and b is not None and dt > 0 else None

    learner = now.get("learner")
    lines = [f"hsd top — run {endpoints['run']}  redis {masked_url(endpoints['redis'])}  "
             f"weights {endpoints['weights']}", ""]
    if progress:
        lines.append(progress)
    lines.append(
        f"learner  step {_fmt(value(learner, 'hsd_learner_step'), '.0f')}  version "
        f"{_fmt(value(learner, 'hsd_learner_policy_version'), '.0f')}  steps/s {_fmt(rate('learner', 'hsd_learner_step'))}"
        f"  tokens/s {_fmt(value(learner, 'hsd_learner_tokens_per_second'), '.0f')}"
        f"  idle {_fmt(value(learner, 'hsd_learner_idle_fraction'), '.0%')}")
    lines.append(
        f"         reward {_fmt(value(learner, 'hsd_learner_reward_mean'))}  loss {_fmt(value(learner, 'hsd_learner_loss'))}"
        f"  staleness {_fmt(hist_mean(learner, 'hsd_learner_staleness_versions'))}"
        f"  ρ {_fmt(hist_mean(learner, 'hsd_learner_importance_ratio'))}"
        f"  IS-masked {_fmt(value(learner, 'hsd_learner_is_masked_fraction'), '.1%')}")
    lines.append(
        f"queues   prompts {_fmt(value(learner, 'hsd_queue_lag_entries', stream='prompts'), '.0f')}"
        f"  rollouts {_fmt(value(learner, 'hsd_queue_lag_entries', stream='rollouts'), '.0f')}"
        f"  buffered {_fmt(value(learner, 'hsd_replay_buffered_groups'), '.0f')}"
        f"  dropped stale {_fmt(value(learner, 'hsd_replay_dropped_total', reason='stale'), '.0f')}"
        f" malformed {_fmt(value(learner, 'hsd_replay_dropped_total', reason='malformed'), '.0f')}"
        f"  peer coverage {_fmt(value(learner, 'hsd_replay_peer_coverage'), '.0%')}")
    lines.append(
        f"credit   |δ| {_fmt(value(learner, 'hsd_credit_abs_mean'))}"
        f"  silence {_fmt(value(learner, 'hsd_credit_silence_fraction'), '.0%')}"
        f"  divergence mass {_fmt(hist_mean(learner, 'hsd_credit_divergence_mass'))}"
        f"  peak offset p50 {_fmt(hist_quantile(learner, 'hsd_credit_peak_offset_tokens'))}"
        f"  teacher KL {_fmt(value(learner, 'hsd_learner_teacher_kl'))}")
    lines += ["", f"{'actor':<12} {'version':>7} {'groups/s':>9} {'tokens/s':>9} {'reward':>7} {'paused':>6}"]
    for name in sorted(n for n in endpoints["metrics"] if n != "learner"):
        s = now.get(name)
        if s is None:
            lines.append(f"{name:<12} {'(unreachable)':>7}")
            continue
        lines.append(
            f"{name:<12} {_fmt(value(s, 'hsd_actor_policy_version'), '.0f'):>7} "
            f"{_fmt(rate(name, 'hsd_actor_groups_total')):>9} {_fmt(rate(name, 'hsd_actor_tokens_total'), '.0f'):>9} "
            f"{_fmt(hist_mean(s, 'hsd_actor_reward')):>7} "
            f"{'yes' if value(s, 'hsd_actor_backpressure_paused') else 'no':>6}")
    return "\n".join(lines)


def joined_actors(client: redis.Redis, run: str) -> dict[str, str]:
    """Actors that joined after the run started (`hsd actor --join`) and are still in it:
    each registers its metrics URL in Redis and removes it when it leaves; endpoints.json
    lists only the ones `hsd run` started."""
    try:
        joined = client.hgetall(Keys(run).actor_metrics)
    except redis.RedisError:
        return {}  # the run's Redis is gone: show what endpoints.json knows
    return {name.decode(): url.decode() for name, url in joined.items()}


def main(run_dir: str, interval: float = 2.0, once: bool = False) -> int:
    path = Path(run_dir) / "endpoints.json"
    if not path.exists():
        print(f"hsd top: {path} does not exist (is the run up?)", file=sys.stderr)
        return 2
    endpoints = json.loads(path.read_text())
    run = RunFile(Path(run_dir))
    client = redis.Redis.from_url(endpoints["redis"], socket_connect_timeout=2, socket_timeout=2)
    started = dict(endpoints["metrics"])
    endpoints["metrics"] = {**joined_actors(client, endpoints["run"]), **started}
    history = deque([(time.monotonic(), {name: scrape(url) for name, url in endpoints["metrics"].items()})])
    clear = "\033[H\033[2J" if sys.stdout.isatty() else ""
    try:
        while True:
            time.sleep(interval)
            endpoints["metrics"] = {**joined_actors(client, endpoints["run"]), **started}  # actors join and leave
            now = {name: scrape(url) for name, url in endpoints["metrics"].items()}
            t1 = time.monotonic()
            while len(history) > 1 and t1 - history[1][0] >= WINDOW_S:
                history.popleft()
            t0, before = history[0]
            history.append((t1, now))
            screen = render(endpoints, now, before, t1 - t0, run.line())
            finished = (Path(run_dir) / "summary.json").exists()
            if finished:
                screen += f"\n\nthe run has finished: {Path(run_dir) / 'summary.json'}"
            print(clear + screen, flush=True)
            if once or finished:
                return 0
    except KeyboardInterrupt:
        return 0
