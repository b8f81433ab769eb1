"""The ``hsd`` command line.

Only argparse and the config module load before a command runs; each command imports
its heavy dependencies (torch, transformers, grpc) inside its own function, so
``hsd --help`` and config errors are fast. Exit codes: 0 ok, 2 bad usage or config,
1 runtime error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from core.method_registry import METHOD_REGISTRY  # imports nothing: the CLI's choices

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("hsd")


def _config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file (README: Configuration)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one config field (repeatable); wins over the file and HSD_* env vars",
    )


def _load(args: argparse.Namespace, extra: dict[str, Any] | None = None):
    from core.config import load_config

    config = load_config(args.config, overrides=args.overrides, extra=extra)
    from methods import configure  # after the config parsed: methods bring torch

    configure(config)
    return config


def cmd_redis(args: argparse.Namespace) -> int:
    import signal
    import threading
    from pathlib import Path

    from core.config import masked_url
    from services.transport.redis_server import EmbeddedRedis

    config = _load(args)
    if config.redis.url:
        print(f"[redis] url is set ({masked_url(config.redis.url)}): nothing to start")
        return EXIT_OK
    data_dir = config.redis.data_dir or str(Path(config.run.dir) / "redis")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with EmbeddedRedis(data_dir) as server:
        print(f"redis {masked_url(server.url)} pid {server.pid} data {server.data_dir}", flush=True)
        while not stop.is_set() and server.process.poll() is None:
            stop.wait(0.5)
        if server.process.poll() is not None:
            print(f"hsd redis: server exited with {server.process.returncode}", file=sys.stderr)
            return EXIT_RUNTIME
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from core.tasks import configured_task, make_task
    from services.apps.verify import main as verify_main

    try:
        if args.task == "data":  # the run's own reward: its [data] section
            extra = {"actor": {"allow_unsandboxed_code": True}} if args.allow_unsandboxed else None
            task = configured_task(_load(args, extra))
        else:
            task = make_task(args.task, allow_unsandboxed=args.allow_unsandboxed)
        return verify_main(task, args.input, args.output, args.workers)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"hsd verify: {err}", file=sys.stderr)
        return EXIT_USAGE


def _join_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Redis URL and run name of a running run: from --join RUN_DIR's endpoints.json or flags."""
    import json
    from pathlib import Path

    extra: dict[str, Any] = {}
    if args.join:
        from core.config import ConfigError

        path = Path(args.join) / "endpoints.json"
        try:
            endpoints = json.loads(path.read_text())
            extra = {"redis": {"url": endpoints["redis"]}, "run": {"name": endpoints["run"]}}
        except FileNotFoundError:
            raise ConfigError(f"--join {args.join}: no {path.name} there (the dir of a running `hsd run`)") from None
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ConfigError(f"--join {args.join}: {path} is not a run's endpoints ({type(err).__name__}: "
                              f"{err})") from None
        if endpoints.get("config"):
            args.config = args.config or endpoints["config"]
    if args.redis_url:
        extra.setdefault("redis", {})["url"] = args.redis_url
    if args.run:
        extra.setdefault("run", {})["name"] = args.run
    return extra


def cmd_actor(args: argparse.Namespace) -> int:
    import signal

    extra = _join_overrides(args)
    config = _load(args, extra)
    if not config.redis.url:
        print("hsd actor: no Redis to join: give --join RUN_DIR, --redis-url or [redis] url",
              file=sys.stderr)
        return EXIT_USAGE
    import contextlib

    import redis

    from actors.actor import Actor, JoinRefused
    from core.engines import make_engine
    from core.tasks import configured_task
    from learner.tiny_model import resolve_model

    engine = make_engine(config.actor.engine, resolve_model(config.model.path), dtype=config.model.dtype,
                         trust_remote_code=config.model.trust_remote_code, max_model_len=config.actor.vllm_max_model_len,
                         gpu_memory_utilization=config.actor.vllm_gpu_memory_utilization)
    task = configured_task(config)
    actor = Actor(config, _redis(config), engine, task, actor_id=args.actor_id)
    metrics = _serve_metrics(config, actor.readiness, args.metrics_file)
    if metrics:  # so that `hsd top` shows actors that joined after the run started
        actor.client.hset(actor.keys.actor_metrics, actor.actor_id, metrics.url)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: actor.stop())
    try:
        actor.run()
    except JoinRefused as err:
        print(f"hsd actor: {err}", file=sys.stderr)
        return EXIT_USAGE
    except redis.RedisError as err:  # e.g. `hsd run` ended and took its Redis with it
        print(f"hsd actor: the run's Redis stopped answering ({err}); leaving", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        if metrics:
            with contextlib.suppress(redis.RedisError):  # gone with the run, or not: nothing to undo
                actor.client.hdel(actor.keys.actor_metrics, actor.actor_id)
            metrics.stop()
    return EXIT_OK


def _redis(config):
    from services.transport.redis_client import reachable

    return reachable(config.redis.url, config.redis.retry_seconds)


def _serve_metrics(config, ready, metrics_file: str | None):
    from services.http import MetricsServer

    if not config.metrics.enabled:
        return None
    server = MetricsServer(config.metrics.host, config.metrics.port, ready=ready).start()
    if metrics_file:
        from pathlib import Path

        Path(metrics_file).write_text(server.url)
    return server


def cmd_learner(args: argparse.Namespace) -> int:
    import json
    import signal
    from pathlib import Path

    extra: dict[str, Any] = {"run": {"steps": args.steps}} if args.steps else {}
    config = _load(args, extra)
    if not config.redis.url:
        print("hsd learner: no Redis: set [redis] url (or HSD_REDIS__URL); `hsd run` starts one for you",
              file=sys.stderr)
        return EXIT_USAGE
    from core.config import to_toml
    from learner.service import Learner, follow
    from learner.tiny_model import resolve_model

    if config.learner.engine == "deepspeed":  # started by torchrun, one process per rank
        from learner.deepspeed_trainer import init_process_group, is_follower

        init_process_group()
        if is_follower():
            # rank 0 alone handles a stop, then releases the followers; killed first,
            # they would leave it waiting in a collective
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)
            follow(config, resolve_model(config.model.path), args.resume)
            return EXIT_OK
    log.info("resolved configuration:\n%s", to_toml(config))
    learner = Learner(config, _redis(config), resolve_model(config.model.path), resume=args.resume,
                      force_config=args.force_config).start()
    metrics = _serve_metrics(config, lambda: (True, f"ok: version {learner.version}"), args.metrics_file)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: learner.stop())
    try:
        learner.run()
        summary = learner.summary()
        Path(config.run.dir).mkdir(parents=True, exist_ok=True)
        (Path(config.run.dir) / "learner-summary.json").write_text(json.dumps(summary, indent=2))
    finally:
        learner.close()
        if metrics:
            metrics.stop()
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    import json
    import signal
    from pathlib import Path

    extra: dict[str, Any] = {}
    if args.method:
        extra["algorithm"] = {"method": args.method}
    if args.steps:
        extra["run"] = {"steps": args.steps}
    if args.run_dir:
        extra.setdefault("run", {})["dir"] = args.run_dir
    if args.resume:
        if args.config or args.run_dir or args.method:
            print("hsd run: --resume continues the run with its own config.toml; give only --steps, --actors "
                  "or --set", file=sys.stderr)
            return EXIT_USAGE
        if not (Path(args.resume) / "config.toml").exists():
            print(f"hsd run: {args.resume} holds no run to resume (no config.toml)", file=sys.stderr)
            return EXIT_USAGE
        args.config = str(Path(args.resume) / "config.toml")
        extra.setdefault("run", {})["dir"] = args.resume
    if args.config is None:
        from core.config import EMBEDDED_CONFIG

        args.config = str(EMBEDDED_CONFIG)
    config = _load(args, extra)
    from learner.tiny_model import resolve_model
    from services.apps.launcher import (
        Launcher,
        RunDirInUse,
        RunFailed,
        ensure_unused,
        fresh_run_dir,
    )

    if not args.run_dir and not args.resume and config.run.dir == type(config.run)().dir:
        config.run.dir = fresh_run_dir(config.run.name)  # every `hsd run` its own dir
    try:
        if not args.resume:
            ensure_unused(Path(config.run.dir))
    except RunDirInUse as err:
        print(f"hsd run: {err}", file=sys.stderr)
        return EXIT_USAGE

    def interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        summary = Launcher(config, args.actors, resolve_model(config.model.path)).run(resume=bool(args.resume))
    except RunFailed as err:
        print(f"hsd run: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    rewards = summary["reward_mean_by_step"]
    print(json.dumps({k: summary[k] for k in ("steps", "final_version", "method", "groups", "wall_seconds")}))
    if rewards:
        k = max(1, len(rewards) // 4)
        print(f"mean reward: first {k} steps {sum(rewards[:k]) / k:.3f} -> last {k} steps "
              f"{sum(rewards[-k:]) / k:.3f}")
    evals = summary["eval_accuracy_by_step"]
    if evals:
        first, last = evals[min(evals, key=int)], evals[max(evals, key=int)]
        print("held-out accuracy: " + " -> ".join(f"step {step} {accuracy:.3f}" for step, accuracy in evals.items())
              + f" ({last - first:+.3f})")
    from learner.checkpoint import latest

    trained = latest(Path(config.run.dir) / "checkpoints")
    print(f"summary in {config.run.dir}/summary.json; per-step metrics in {config.run.dir}/metrics.jsonl")
    if trained is not None:
        print(f"trained model (a Hugging Face folder): {trained / 'model'}")
        print(f"next: `hsd credit --model {trained / 'model'} --prompt P --response R --peer Y` to see its credit, "
              "`hsd compare` to compare the methods (docs/method-comparison.md)")
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    import json
    import time
    from dataclasses import replace
    from pathlib import Path

    from learner.tiny_model import WARM_STARTS, resolve_model
    from services.apps.arms import ARMS, BASELINE, unknown_arms
    from services.apps.experiment import FALSIFICATION, Protocol, compare, markdown
    from services.apps.launcher import Launcher
    from services.apps.plot import pyplot
    from services.apps.staleness_study import staleness_markdown

    pyplot()  # hours of runs end in figures: no matplotlib fails now, not then

    if args.config is None:
        from core.config import EMBEDDED_CONFIG

        args.config = str(EMBEDDED_CONFIG)
    task = _load(args).actor.task  # a bad file or override fails here, before any run

    def make_config(overrides: list[str]):
        return _load(argparse.Namespace(config=args.config, overrides=[*args.overrides, *overrides]))

    def given(name: str, default):
        value = getattr(args, name)
        return default if value is None else value

    def numbers(flag: str, text: str | None, kind: type) -> tuple | None:
        if text is None:
            return None
        try:
            values = tuple(kind(x) for x in text.split(",") if x)
        except ValueError:
            values = ()
        if (not values and text) or any(v < 0 for v in values):
            raise ValueError(f"{flag} takes comma-separated non-negative numbers, got {text!r}")
        return values

    try:
        lrs, staleness = numbers("--lrs", args.lrs, float), numbers("--staleness", args.staleness, int)
    except ValueError as err:
        print(f"hsd compare: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.warm_starts is None and task not in WARM_STARTS:
        print(f"hsd compare: --warm-starts is needed: no warm starts ship for actor.task {task!r} "
              f"(they do for {', '.join(WARM_STARTS)})", file=sys.stderr)
        return EXIT_USAGE
    warm_starts = args.warm_starts.split(",") if args.warm_starts else WARM_STARTS[task]
    base = Protocol(warm_starts=tuple(resolve_model(m) for m in warm_starts))
    if args.quick:
        base = base.quick()
    protocol = replace(
        base, arms=tuple(args.arms.split(",")) if args.arms else base.arms,
        seeds=given("seeds", base.seeds), steps=given("steps", base.steps),
        eval_problems=given("eval_problems", base.eval_problems), srt_target=given("srt_target", base.srt_target),
        srt_stage2=given("srt_stage2", base.srt_stage2), srt_epochs=given("srt_epochs", base.srt_epochs),
        srt_lr=given("srt_lr", base.srt_lr), equal_samples=args.equal_samples or base.equal_samples,
        max_response_tokens=given("max_response_tokens", base.max_response_tokens),
        lrs=lrs or base.lrs,
        actors=given("actors", base.actors), parallel=given("parallel", base.parallel),
        staleness=base.staleness if staleness is None else staleness,
        repeats=given("repeats", base.repeats))
    if unknown := unknown_arms(protocol.arms):
        print(f"hsd compare: unknown arm(s) {', '.join(unknown)}; the arms are {', '.join(ARMS)}", file=sys.stderr)
        return EXIT_USAGE
    if BASELINE not in protocol.arms:
        print(f"hsd compare: --arms must include {BASELINE} (the baseline every difference is taken from)",
              file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"comparing {', '.join(protocol.arms)}: {len(protocol.warm_starts)} warm start(s) × {protocol.seeds} "
          f"seeds × {protocol.steps} steps; output in {out}", flush=True)
    print(f"the claim is falsified if: {FALSIFICATION}", flush=True)
    results = compare(make_config, protocol, out,
                      lambda c: Launcher(c, protocol.actors, resolve_model(c.model.path), show_progress=False).run())
    print("learning rates: " + ", ".join(f"{arm} {lr:g}" for arm, lr in results["lrs"].items())
          + f" (each arm's best of {', '.join(f'{x:g}' for x in protocol.lrs)} among those with no collapsed "
          f"sweep run; an arm best at the largest swept on, up to {protocol.lr_extensions} steps)")
    print(markdown(results["analysis"], protocol.arms), end="")
    print(f"verdict: {json.dumps(results['analysis']['verdict'])}")
    if results["staleness"]["analysis"]:
        print(staleness_markdown(results["staleness"]["analysis"]), end="")
    print(f"results, table and plots in {out} ({results['wall_seconds'] / 60:.1f} min)")
    return EXIT_OK


def _compare_flags(p: argparse.ArgumentParser) -> None:
    _config_flags(p)
    p.add_argument("--quick", action="store_true",
                   help="the whole pipeline at its smallest size (1 warm start, 2 seeds, 1 step; for tests)")
    p.add_argument("--arms", help="comma-separated, grpo included (default: every arm; docs/method-comparison.md)")
    p.add_argument("--warm-starts", help="comma-separated models, one per warm-start seed (default: the task's shipped "
                   "ones, tiny,tiny-seed2 on chain; other tasks must name them)")
    p.add_argument("--seeds", type=int, help="RL seeds per warm start (default 5)")
    p.add_argument("--steps", type=int, help="steps per run (default 12; samples = steps × B × G)")
    p.add_argument("--lrs", help="learning rates every arm sweeps (default 1e-4,2e-4,3e-4; one value: no sweep)")
    p.add_argument("--srt-target", type=int, help="verified revisions SD-Zero's phase 1 collects (default 1000)")
    p.add_argument("--srt-stage2", type=int, help="of them, stage 2's quota (default 200; stage 1 takes the rest)")
    p.add_argument("--srt-epochs", type=int, help="epochs of each SRT stage (default 3)")
    p.add_argument("--srt-lr", type=float, help="learning rate of the SRT stages (supervised; default 1e-4)")
    p.add_argument("--equal-samples", action="store_true",
                   help="every arm that does not start from the SRT model runs as many more steps as the SRT "
                        "phase's samples fill (SD-Zero against its baselines at equal samples)")
    p.add_argument("--max-response-tokens", type=int,
                   help="every run's response budget (default 160: holds an SRT model's attempt and revision)")
    p.add_argument("--eval-problems", type=int, help="held-out problems per evaluation (default 1024)")
    p.add_argument("--actors", type=int, help="actors per run (default 2)")
    p.add_argument("--parallel", type=int, help="runs at a time (default 1; more where cores allow, e.g. a GPU box)")
    p.add_argument("--staleness", help="η values of the synchronous-vs-asynchronous study of grpo and hsd "
                                       "(default 0,1,2,4; an empty value skips the study)")
    p.add_argument("--repeats", type=int, help="pairs run twice at η = 0 to test reproducibility (default 3)")
    p.add_argument("--out", help="output dir (default runs/compare-TIMESTAMP)")


def _config_cmd_flags(p: argparse.ArgumentParser) -> None:
    _config_flags(p)
    p.add_argument("--fields", action="store_true", help="list every field: type, default and meaning")


def cmd_config(args: argparse.Namespace) -> int:
    from core.config import EMBEDDED_CONFIG, config_hash, fields_table, to_toml

    if args.fields:
        rows = fields_table()
        width = max(len(r[0]) for r in rows)
        print(f"# library defaults; `hsd run` without --config starts from {EMBEDDED_CONFIG.name} (`hsd config`)")
        for path, kind, default, meaning in rows:
            print(f"{path:<{width}}  {kind} = {default}\n{'':<{width}}  {meaning}")
        return EXIT_OK

    if args.config is None:  # what `hsd run` would use
        args.config = str(EMBEDDED_CONFIG)
    config = _load(args)
    print(f"# {args.config} + environment + --set; config hash {config_hash(config)}")
    print(to_toml(config), end="")
    return EXIT_OK


def _run_flags(p: argparse.ArgumentParser) -> None:
    _config_flags(p)
    p.add_argument("--method", choices=list(METHOD_REGISTRY))
    p.add_argument("--steps", type=int, help="optimiser steps to train")
    p.add_argument("--actors", type=int, default=2, help="actor processes (default 2)")
    p.add_argument("--run-dir", help="where logs, checkpoints and the summary go")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a stopped or killed run in RUN_DIR: its config, Redis data and latest checkpoint")


def _metrics_file_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-file", help="write the metrics URL here once serving")


def _learner_flags(p: argparse.ArgumentParser) -> None:
    _config_flags(p)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--force-config", action="store_true",
                   help="with --resume: accept a checkpoint trained under another configuration")
    p.add_argument("--steps", type=int, help="train until this many steps are committed")
    _metrics_file_flag(p)


def _actor_flags(p: argparse.ArgumentParser) -> None:
    _config_flags(p)
    p.add_argument("--join", metavar="RUN_DIR", help="join the run whose endpoints.json is here")
    p.add_argument("--redis-url", help="the run's Redis (instead of --join)")
    p.add_argument("--run", help="the run's name (instead of --join)")
    p.add_argument("--actor-id", help="consumer name (default: host-pid-random)")
    _metrics_file_flag(p)


def _verify_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True,
                   help="math | code | arith | gsm8k | humaneval | math:FILE | gym:NAME | data (with --config: its reward)")
    _config_flags(p)
    p.add_argument("--input", required=True, metavar="FILE.jsonl")
    p.add_argument("--output", metavar="FILE", help="default: stdout")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--allow-unsandboxed", action="store_true",
                   help="run code without a sandbox when none is available (unsafe)")


def _credit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a Hugging Face model folder, or `tiny`")
    p.add_argument("--prompt", required=True)
    p.add_argument("--response", required=True)
    teacher = p.add_mutually_exclusive_group()
    teacher.add_argument("--peer", help="a successful peer response (hsd)")
    teacher.add_argument("--answer", help="the reference answer (opsd)")
    teacher.add_argument("--reward", type=float, help="the response's reward, 0 or 1 (sdzero)")
    p.add_argument("--method", choices=[m for m, e in METHOD_REGISTRY.items() if e.teacher_reads],
                   help="default: the method whose teacher reads the input given")
    p.add_argument("--json", action="store_true", help="print tokens, delta, divergence and both id lists")
    p.add_argument("--png", metavar="FILE", help="write a bar plot of δ_t")


def _top_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run dir (its endpoints.json)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between scrapes")
    p.add_argument("--once", action="store_true", help="print one view and exit")


def cmd_top(args: argparse.Namespace) -> int:
    from services.apps.top import main as top_main

    return top_main(args.run_dir, args.interval, args.once)


def cmd_credit(args: argparse.Namespace) -> int:
    from learner.credit_cli import main as credit_main

    return credit_main(args)


def _warm_start_flags(p: argparse.ArgumentParser) -> None:
    from learner.curricula import MODULES

    p.add_argument("--task", default="chain", choices=list(MODULES), help="curriculum (default chain)")
    p.add_argument("--out", required=True, metavar="DIR", help="where the new model folder goes")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steps", type=int, help="optimiser steps (default: the curriculum's)")


def cmd_warm_start(args: argparse.Namespace) -> int:
    from pathlib import Path

    from learner.tiny_model import build_tiny_model
    from learner.warm_start import warm_start

    out = Path(args.out)
    if (out / "config.json").exists():
        print(f"hsd warm-start: {out} already holds a model; choose another --out", file=sys.stderr)
        return EXIT_USAGE
    build_tiny_model(out, seed=0)
    warm_start(out, args.task, steps=args.steps, seed=args.seed)
    print(f"warm-started model in {out}")
    return EXIT_OK


def _gates_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="the model to check (default: the shipped tiny model)")
    from core.tasks.chain import WORLDS

    p.add_argument("--reviser", metavar="DIR",
                   help="the reviser of gates G4 (default: the model itself; after SD-Zero's phase 1, its SRT model)")
    p.add_argument("--task", default="chain", choices=list(WORLDS), help="the chain task (default chain)")
    p.add_argument("--problems", type=int, default=128, help="held-out problems of the task")
    p.add_argument("--json", action="store_true", help="print the gates as JSON")


def cmd_gates(args: argparse.Namespace) -> int:
    import json

    from learner.gates import measure, report
    from learner.tiny_model import resolve_model

    gates = measure(resolve_model(args.model), problems=args.problems, task_name=args.task,
                    reviser_path=resolve_model(args.reviser) if args.reviser else None)
    result = report(gates)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for g in gates:
            print(g.line())
        print("gates pass: a comparison on this model can conclude" if result["conclusive"]
              else "a gate failed: a comparison on this model is inconclusive")
    return EXIT_OK if result["conclusive"] else 1


def _plot_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="the dir of an hsd run (it reads metrics.jsonl)")
    p.add_argument("--png", metavar="FILE", help="where the figure goes (default RUN_DIR/curves.png)")


def cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from services.apps.plot import plot

    try:
        out = plot(Path(args.run_dir), Path(args.png or Path(args.run_dir) / "curves.png"))
    except FileNotFoundError as err:
        print(f"hsd plot: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"curves in {out}")
    return EXIT_OK


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def _srt_flags(p: argparse.ArgumentParser) -> None:
    from core.tasks.chain import WORLDS

    p.add_argument("--model", default="tiny", help="the model that collects and is trained (default tiny)")
    p.add_argument("--task", default="chain", choices=list(WORLDS), help="the chain task (default chain)")
    p.add_argument("--out", required=True, metavar="DIR", help="where the SRT model folder and srt.json go")
    p.add_argument("--target", type=_positive, default=6000, help="verified revisions to collect (default 6000)")
    p.add_argument("--stage2-size", type=_positive, default=1000, help="stage 2's quota (default 1000)")
    p.add_argument("--attempts", type=_positive, default=3, help="attempts a problem (default 3)")
    p.add_argument("--revisions", type=_positive, default=3, help="revisions an attempt (default 3)")
    p.add_argument("--revise-correct", action="store_true", help="revise right attempts too (into stage 2)")
    p.add_argument("--epochs", type=_positive, default=3, help="epochs a stage (default 3)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak lr of each stage (default 1e-4)")
    p.add_argument("--seed", type=int, default=0)


def cmd_srt(args: argparse.Namespace) -> int:
    import json

    from learner.srt_phase import srt_phase
    from learner.tiny_model import resolve_model

    try:
        report = srt_phase(resolve_model(args.model), args.out, args.task, target=args.target,
                           stage2_size=args.stage2_size, attempts=args.attempts, revisions=args.revisions,
                           revise_correct=args.revise_correct, epochs=args.epochs, lr=args.lr, seed=args.seed)
    except ValueError as err:
        print(f"hsd srt: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(report, indent=2))
    print(f"SRT model in {args.out}; its gates: hsd gates --model {args.out} --task {args.task}")
    return EXIT_OK


Flags = Callable[[argparse.ArgumentParser], None]
COMMANDS: list[tuple[str, str, Callable[[argparse.Namespace], int], Flags]] = [
    ("run", "all-in-one: embedded Redis, learner and actors on this machine", cmd_run, _run_flags),
    ("learner", "the learner service (training, weight service, replay)", cmd_learner, _learner_flags),
    ("actor", "a rollout actor that joins a running run (many may)", cmd_actor, _actor_flags),
    ("redis", "start the embedded Redis server and wait (Ctrl-C stops it)", cmd_redis, _config_flags),
    ("credit", "per-token credit of a response against a peer or answer", cmd_credit, _credit_flags),
    ("verify", "score a JSONL file of completions with a task's verifier", cmd_verify, _verify_flags),
    ("top", "live terminal view of a run's metrics", cmd_top, _top_flags),
    ("config", "print the resolved configuration and its hash (--fields: every field's meaning)", cmd_config,
     _config_cmd_flags),
    ("compare", "the methods paired over warm starts and seeds on the embedded default; paired differences",
     cmd_compare, _compare_flags),
    ("warm-start", "build and warm-start a tiny model on a task's curriculum", cmd_warm_start, _warm_start_flags),
    ("gates", "check that a warm-started model can support the method comparison", cmd_gates, _gates_flags),
    ("srt", "SD-Zero's phase 1 as the reference runs it: collect revisions, stage 1 then stage 2", cmd_srt,
     _srt_flags),
    ("plot", "a run's curves (reward, held-out accuracy, loss, …) from its dir alone", cmd_plot, _plot_flags),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hsd",
        description="Asynchronous actor-learner post-training with dense self-generated "
        "token-level credit (HSD, SD-Zero, OPSD, GRPO).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text, handler, add_flags in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_flags(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from core.config import ConfigError
    from services.errors import StartupError

    try:
        return args.handler(args)
    except (ConfigError, StartupError) as err:
        print(f"hsd {args.command}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
