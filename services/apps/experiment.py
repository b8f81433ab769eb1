"""`hsd experiment compare`: the methods side by side on the embedded default.

Each method × seed is one `hsd run` (the same processes, config and sample budget; only
`algorithm.method` and `run.seed` change), evaluated on the same fixed held-out problems
every `learner.eval_every` steps. Written to the output dir:

- ``results.json``: every run's held-out accuracy by samples trained, and the table;
- ``table.md``: held-out accuracy at each budget, mean ± std over seeds, per method;
- ``accuracy.png``: accuracy against samples, one curve per method (mean, ±1 std band);
- ``credit_alignment.png``: mean |δ_t| of failed samples aligned at their divergence from
  a successful peer, per teacher method (the claim under test: the answer-conditioned
  teacher is nearly silent at intermediate positions, the peer-conditioned one peaks at
  the divergence).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from core.config import Config
from services.apps.launcher import Launcher

log = logging.getLogger(__name__)
OFFSETS = range(-8, 9)  # token offsets from the divergence position


def run_all(config: Config, model_path: str, methods: list[str], seeds: list[int], out: Path,
            actors: int = 2) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in seeds:
        for method in methods:  # interleaved, so that a slower spell of the machine hits all
            c = config.model_copy(deep=True)
            c.algorithm.method = method
            c.run.seed = seed
            c.run.name = f"compare-{method}-{seed}"
            c.run.dir = str(out / f"{method}-seed{seed}")
            started = time.monotonic()
            summary = Launcher(c, actors, model_path).run()
            per_step = c.learner.batch_groups * c.actor.group_size
            accuracy = {int(step) * per_step: a for step, a in summary["eval_accuracy_by_step"].items()}
            runs.append({"method": method, "seed": seed, "dir": c.run.dir, "accuracy_by_samples": accuracy,
                         "wall_seconds": round(time.monotonic() - started, 1)})
            log.info("%s seed %d: held-out %s", method, seed, accuracy)
    results = {"methods": methods, "seeds": seeds, "runs": runs, "table": table(runs, methods),
               "credit_alignment": credit_alignment(runs)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(markdown(results["table"], methods))
    plot_accuracy(runs, methods, out / "accuracy.png")
    plot_alignment(results["credit_alignment"], out / "credit_alignment.png")
    return results


def table(runs: list[dict], methods: list[str]) -> dict[str, dict[int, tuple[float, float]]]:
    """method -> samples -> (mean, std over seeds) of held-out accuracy."""
    out: dict[str, dict[int, tuple[float, float]]] = {}
    for method in methods:
        by_budget: dict[int, list[float]] = {}
        for r in runs:
            if r["method"] == method:
                for samples, a in r["accuracy_by_samples"].items():
                    by_budget.setdefault(samples, []).append(a)
        out[method] = {n: (statistics.fmean(v), statistics.pstdev(v)) for n, v in sorted(by_budget.items())}
    return out


def markdown(t: dict[str, dict[int, tuple[float, float]]], methods: list[str]) -> str:
    budgets = sorted({n for m in methods for n in t[m]})
    rows = ["| method | " + " | ".join(f"{n} samples" for n in budgets) + " |",
            "|---|" + "---|" * len(budgets)]
    for m in methods:
        cells = [f"{t[m][n][0]:.3f} ± {t[m][n][1]:.3f}" if n in t[m] else "" for n in budgets]
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def credit_alignment(runs: list[dict]) -> dict[str, dict[str, Any]]:
    """Per teacher method: mean |δ| at each offset from the divergence (failed samples
    with a successful peer), and how many samples contributed."""
    sums: dict[str, dict[int, list[float]]] = {}
    for r in runs:
        path = Path(r["dir"]) / "credit.jsonl"
        if not path.exists():
            continue  # grpo: no teacher, no credit
        acc = sums.setdefault(r["method"], {k: [] for k in OFFSETS})
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            d = rec["divergence"]
            if d is None or rec["reward"] > 0:
                continue
            for k in OFFSETS:
                if 0 <= d + k < len(rec["delta"]):
                    acc[k].append(abs(rec["delta"][d + k]))
    return {m: {"offsets": list(OFFSETS), "abs_delta": [statistics.fmean(v[k]) if v[k] else None for k in OFFSETS],
                "samples": len(v[0])} for m, v in sums.items() if v[0]}


def plot_accuracy(runs: list[dict], methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table(runs, methods)
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in methods:
        xs = sorted(t[m])
        mean = [t[m][x][0] for x in xs]
        std = [t[m][x][1] for x in xs]
        ax.plot(xs, mean, marker="o", label=m)
        ax.fill_between(xs, [a - s for a, s in zip(mean, std, strict=True)],
                        [a + s for a, s in zip(mean, std, strict=True)], alpha=0.15)
    ax.set_xlabel("samples trained")
    ax.set_ylabel("held-out accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_alignment(alignment: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m, a in alignment.items():
        points = [(k, v) for k, v in zip(a["offsets"], a["abs_delta"], strict=True) if v is not None]
        ax.plot([k for k, _ in points], [v for _, v in points], marker="o", label=f"{m} ({a['samples']} samples)")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("token offset from the divergence from a successful peer")
    ax.set_ylabel("mean |δ_t| (failed samples)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
