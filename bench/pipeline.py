"""Pipeline: samples/s of a whole `hsd run` with asynchronous actors (η = 1, 2, 4) against
the synchronous schedule (η = 0) on the same configuration, with the learner pinned to
one core and the actors to another.

With η = 0 admission lets exactly one batch be in flight, so the actors generate (time g
per batch) while the learner waits, then the learner trains (t) while the actors wait: a
step takes g + t. With η ≥ 1 the two overlap and a step takes max(g, t) at best, so the
speedup is bounded by (g + t) / max(g, t). The synchronous run measures both: the
learner's idle time per step is g, the rest of its step is t. Each figure reports the
speedup, its share of that bound, and the learner's idle fraction.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from bench.common import Figure, Scale
from core.config import EMBEDDED_CONFIG as EMBEDDED
from core.config import load_config
from services.apps.launcher import Launcher, Placement


def placement(actors: int) -> Placement:
    """Learner on the first core, actors on the others (on one core: everything shares it)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return Placement.shared(actors, 1)
    return Placement.pinned({cores[0]}, set(cores[1:]), actors)


def run_once(model: str, eta: int, steps: int, actors: int, root: Path) -> dict:
    config = load_config(EMBEDDED, environ={}, extra={
        "run": {"steps": steps, "dir": str(root / f"eta{eta}-actors{actors}"), "name": f"bench-eta{eta}"},
        "learner": {"max_staleness": eta, "checkpoint_every": 0, "credit_log_every": 0, "eval_every": 0}})
    summary = Launcher(config, actors, model, placement(actors)).run()
    detail = json.loads((Path(config.run.dir) / "learner-summary.json").read_text())
    return {"samples_per_s": summary["throughput"]["samples_per_second"],
            "idle": summary["throughput"]["learner_idle_fraction"],
            "idle_s": detail["idle_seconds"], "loop_s": detail["loop_seconds"], "steps": detail["steps"]}


def figures_for(actors: int, etas: list[int], sync: dict, runs: dict[int, dict]) -> list[Figure]:
    g = sync["idle_s"] / sync["steps"]
    t = (sync["loop_s"] - sync["idle_s"]) / sync["steps"]
    bound = (g + t) / max(g, t)
    out = []
    suffix = "" if actors == 1 else f"_{actors}actors"
    for eta in etas:
        r = runs[eta]
        speedup = r["samples_per_s"] / sync["samples_per_s"]
        out.append(Figure(f"pipeline_eta{eta}{suffix}_samples_per_s", r["samples_per_s"], sync["samples_per_s"],
                          ">= 1.0", "samples/s",
                          f"vs η=0; bound (g+t)/max(g,t) = {bound:.2f} (g {g:.2f}s, t {t:.2f}s per step); "
                          f"learner idle {r['idle']:.2f} (η=0: {sync['idle']:.2f})"))
        out.append(Figure(f"pipeline_eta{eta}{suffix}_share_of_bound", speedup, bound, ">= 0.8", "x",
                          "speedup over η=0 against the (g+t)/max(g,t) bound"))
        out.append(Figure(f"pipeline_eta{eta}{suffix}_learner_idle_fraction", r["idle"], sync["idle"],
                          "<= 1.0", "fraction", "learner idle against η=0"))
    return out


def run(scale: Scale = Scale.QUICK, model: str = "tiny") -> list[Figure]:
    from learner.tiny_model import resolve_model

    model = resolve_model(model)
    steps = {Scale.SMOKE: 2, Scale.QUICK: 8, Scale.FULL: 20}[scale]
    figures = []
    with tempfile.TemporaryDirectory(prefix="hsd-bench-pipeline-") as tmp:
        # FULL adds a scaling row: two actor processes sharing the actors' cores
        for actors, etas in {Scale.SMOKE: [(1, [1])], Scale.QUICK: [(1, [1, 2, 4])],
                             Scale.FULL: [(1, [1, 2, 4]), (2, [1])]}[scale]:
            sync = run_once(model, 0, steps, actors, Path(tmp))
            runs = {eta: run_once(model, eta, steps, actors, Path(tmp)) for eta in etas}
            figures += figures_for(actors, etas, sync, runs)
    return figures


if __name__ == "__main__":
    from bench.common import table

    print(table(run()))
