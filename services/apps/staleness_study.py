"""Synchronous against asynchronous: what the staleness bound η costs and buys.

At η = 0 the learner trains only groups sampled by its current weights (synchronous: the
actors wait for every version); at η > 0 actors generate ahead with weights up to η
versions old, corrected by importance weights, and stale groups are dropped. Per arm and
η, over the (warm start, seed) pairs:

- final held-out accuracy (mean ± SE) and its paired difference from η = 0;
- samples/s and its ratio to η = 0 (per pair, then the mean);
- the IS weights' ESS fraction and the fraction of generated groups dropped;
- repeats: pairs run twice at η = 0 — equal final-weight digests mean the run is
  reproducible bit for bit; otherwise their accuracy difference says how far apart two
  runs of one config land.

Goal, stated before the run: asynchronous HSD at η ≤ 2 within 1 SE of synchronous HSD
(the paired difference's mean not below −1 SE) and at least 1.5× its samples/s.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from services.apps.paired import mean_se, paired
from services.apps.run_result import RunResult

GOAL = ("asynchronous HSD at η ≤ 2 within 1 SE of synchronous HSD (η = 0) and at least 1.5× its samples/s")
SPEEDUP = 1.5


def analyse_staleness(runs: Sequence[RunResult], repeats: Sequence[RunResult], arms: Sequence[str],
                      etas: Sequence[int]) -> dict[str, Any]:
    by = {(r.arm, r.max_staleness, r.warm_start, r.seed): r for r in runs}
    pairs = sorted({(r.warm_start, r.seed) for r in runs})
    pairs = [p for p in pairs if all((a, e, *p) in by for a in arms for e in etas)]
    table: dict[str, dict[str, Any]] = {}
    for arm in arms:
        table[arm] = {}
        for eta in etas:
            mine = [by[(arm, eta, *p)] for p in pairs]
            row: dict[str, Any] = {"final": mean_se([r.final for r in mine]) if mine else None}
            for name in ("samples_per_second", "ess_fraction", "dropped_fraction"):
                values = [getattr(r, name) for r in mine if getattr(r, name) is not None]
                row[name] = statistics.fmean(values) if values else None
            if 0 in etas and eta != 0 and mine:
                base = [by[(arm, 0, *p)] for p in pairs]
                d = paired([r.final for r in base], [r.final for r in mine])
                row["final_minus_sync"] = asdict(d) if d else None
                ratios = [r.samples_per_second / b.samples_per_second for r, b in zip(mine, base, strict=True)
                          if r.samples_per_second and b.samples_per_second]
                row["speedup"] = statistics.fmean(ratios) if ratios else None
            table[arm][str(eta)] = row
    again = []
    for r in repeats:
        first = by.get((r.arm, r.max_staleness, r.warm_start, r.seed))
        if first is not None:
            again.append({"arm": r.arm, "warm_start": r.warm_start, "seed": r.seed, "final": first.final,
                          "repeat_final": r.final,
                          "bit_identical": first.weights_sha256 is not None
                          and first.weights_sha256 == r.weights_sha256})
    return {"pairs": len(pairs), "table": table, "repeats": again, "goal": GOAL, "goal_met": goal_met(table)}


def goal_met(table: dict[str, dict[str, Any]]) -> bool | None:
    """:data:`GOAL` on HSD's rows at η = 1 and 2 (None where they did not run)."""
    rows = [table.get("hsd", {}).get(str(eta)) for eta in (1, 2)]
    rows = [r for r in rows if r and r.get("final_minus_sync") and r.get("speedup") is not None]
    if not rows:
        return None
    return all(r["final_minus_sync"]["mean"] >= -r["final_minus_sync"]["se"] and r["speedup"] >= SPEEDUP
               for r in rows)


def staleness_markdown(analysis: dict[str, Any]) -> str:
    rows = ["| arm | η | final held-out | − η = 0 (95% CI) | samples/s | × η = 0 | ESS fraction | dropped |",
            "|---|---|---|---|---|---|---|---|"]

    def number(x: float | None, fmt: str) -> str:
        return "" if x is None else format(x, fmt)

    for arm, by_eta in analysis["table"].items():
        for eta, row in by_eta.items():
            final = f"{row['final'][0]:.3f} ± {row['final'][1]:.3f}" if row["final"] else ""
            d = row.get("final_minus_sync")
            diff = f"{d['mean']:+.3f} ± {d['se']:.3f} ({d['low']:+.3f} … {d['high']:+.3f})" if d else ""
            rows.append(f"| {arm} | {eta} | {final} | {diff} | {number(row['samples_per_second'], '.1f')} | "
                        f"{number(row.get('speedup'), '.2f')} | {number(row['ess_fraction'], '.3f')} | "
                        f"{number(row['dropped_fraction'], '.3f')} |")
    rows += ["", f"Goal: {analysis['goal']}: {analysis['goal_met']}", ""]
    for r in analysis["repeats"]:
        rows.append(f"- repeat {r['arm']} ws{r['warm_start']} seed {r['seed']} at η = 0: final {r['final']:.4f} "
                    f"then {r['repeat_final']:.4f}; bit for bit: {r['bit_identical']}")
    return "\n".join(rows) + "\n"
