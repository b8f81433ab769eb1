"""`hsd compare`: the methods side by side on the table chain, paired, as the claim needs.

::

    1 lr sweep     grpo × lrs × warm starts × sweep seeds ──► lr (best mean final held-out
                   among the lrs none of whose sweep runs collapsed)
    2 SRT          srt from each warm start at its own (supervised) lr ──► SRT model: sdzero's
                   student and frozen teacher;
                   its attempts + revisions count in sdzero's sample budget; gates G1–G4
    3 grid         warm start × seed × method, one `hsd run` each at that lr
    4 mechanism    on each warm start, before RL: |δ| of both teachers around the divergence,
                   k = 1 (control) and k = 6
    5 analysis     per method: final held-out accuracy (all, per k), reference log-prob;
                   paired differences over (warm start, seed) with 95% t intervals

Runs of one (warm start, seed) pair differ only in ``algorithm.method`` (and, for sdzero,
the model: its warm start's SRT model); they draw the same prompts and are evaluated on
the same held-out problems with the same sampling seed, so their differences are paired.
The sweep's seeds are not the grid's: the lr is chosen on other runs than the ones compared,
on the same held-out split (a choice that favours the baseline it is tuned for), on every
warm start (an lr that suits one warm start can collapse GRPO on another), with more than
one seed each: an lr at which any sweep run ends below where it started is out, so that
the baseline the methods are compared with is a GRPO that trains, not one that diverges
on some seeds (with one seed per warm start, 3e-4 won and then collapsed 2 of 5 grid runs
on one warm start). Every run gets
the same response budget, one that holds an SRT model's attempt, revision phrase and
revision (≈ 140 tokens at k = 6); the other methods stop at their end token well before it.

Written to the output dir: ``results.json`` (protocol, every run, the analysis),
``table.md``, ``accuracy.png`` (accuracy against samples generated, mean ± SE),
``credit_alignment.png`` (the mechanism, per k).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from core.config import Config

log = logging.getLogger(__name__)
OFFSETS = range(-6, 9)  # token offsets from the divergence in the credit-alignment plot
BASELINE = "grpo"
# stated before any result (README): the claim is falsified if HSD is not above GRPO by more
# than 2 SE of the paired difference at k >= 4, or the HSD - OPSD gap does not grow with k
FALSIFICATION = ("HSD − GRPO final held-out accuracy at k ≥ 4 not above 2 SE of the paired difference, "
                 "or the HSD − OPSD gap not growing with k (k = 6 not above k = 1)")


@dataclass(frozen=True)
class Protocol:
    warm_starts: tuple[str, ...]  # model folders; the first is the sweep's
    methods: tuple[str, ...] = ("grpo", "opsd", "hsd", "sdzero")
    seeds: int = 5
    steps: int = 12
    eval_every: int = 6
    eval_problems: int = 1024
    lrs: tuple[float, ...] = (1e-4, 2e-4, 3e-4)
    sweep_seeds: tuple[int, ...] = (100, 101)
    srt_steps: int = 8
    srt_lr: float = 1e-4  # supervised; 3e-4 lowered the student and the reviser (README)
    max_response_tokens: int = 160
    alignment_problems: int = 512
    actors: int = 2
    parallel: int = 1  # runs at a time (a GPU machine's cores); 1 on a laptop

    def quick(self) -> Protocol:
        """The whole pipeline at the smallest size, for the test suite."""
        return replace(self, warm_starts=self.warm_starts[:1], methods=("grpo", "sdzero"), seeds=2, steps=1,
                       eval_every=1, eval_problems=32, lrs=self.lrs[:1], srt_steps=1, alignment_problems=32,
                       actors=1)


@dataclass(frozen=True)
class Paired:
    """mean_b − mean_a over pairs, with its standard error and 95% t interval."""

    n: int
    mean: float
    se: float
    low: float
    high: float

    def text(self) -> str:
        return f"{self.mean:+.3f} ± {self.se:.3f} (95% CI {self.low:+.3f} … {self.high:+.3f}, n = {self.n})"


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile, by bisection on its CDF (the density integrated with Simpson's
    rule): the stdlib has no t distribution and the project no SciPy."""
    if not 0.5 <= p < 1:
        raise ValueError("p must be in [0.5, 1)")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float, n: int = 2000) -> float:
        h = x / n
        f = [math.exp(log_c - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def paired(a: Sequence[float], b: Sequence[float]) -> Paired | None:
    """b − a over pairs: mean, SE = sd/√n (sample sd), mean ± t(0.975, n−1)·SE."""
    d = [y - x for x, y in zip(a, b, strict=True)]
    if len(d) < 2:
        return None
    se = statistics.stdev(d) / math.sqrt(len(d))
    half = t_quantile(0.975, len(d) - 1) * se
    mean = statistics.fmean(d)
    return Paired(len(d), mean, se, mean - half, mean + half)


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)


# ---------------------------------------------------------------------- running


@dataclass
class RunResult:
    name: str
    method: str
    warm_start: int
    seed: int
    lr: float
    dir: str
    samples_before: int  # samples generated before this run (sdzero: its SRT phase's)
    samples_per_step: int
    accuracy_by_step: dict[int, float]
    accuracy_by_length: dict[int, float]  # at the last evaluation
    reference_logprob: float | None  # at the last evaluation
    wall_seconds: float
    samples: dict[str, int] = field(default_factory=dict)  # attempts, revisions

    @property
    def final(self) -> float:
        return self.accuracy_by_step[max(self.accuracy_by_step)]

    def accuracy_by_samples(self) -> dict[int, float]:
        return {self.samples_before + step * self.samples_per_step: a for step, a in self.accuracy_by_step.items()}


RunFn = Callable[[Config], dict[str, Any]]  # one `hsd run` of a config → its summary


class Experiment:
    def __init__(self, make_config: Callable[[list[str]], Config], protocol: Protocol, out: Path,
                 run: RunFn) -> None:
        self.make_config, self.p, self.out, self._run = make_config, protocol, out, run

    def _one(self, name: str, method: str, ws: int, seed: int, lr: float, steps: int,
             model: str | None = None, samples_before: int = 0) -> RunResult:
        p = self.p
        c = self.make_config([
            f'algorithm.method="{method}"', f"run.seed={seed}", f"run.steps={steps}", f"learner.lr={lr}",
            f'run.name="{name}"', f'run.dir="{self.out / name}"', f"learner.eval_every={p.eval_every}",
            f"learner.eval_problems={p.eval_problems}", "learner.eval_samples=1",
            f'model.path="{model or p.warm_starts[ws]}"', f"model.max_response_tokens={p.max_response_tokens}"])
        started = time.monotonic()
        s = self._run(c)
        by_length = s.get("eval_by_length_by_step", {})
        logprob = s.get("eval_reference_logprob_by_step", {})
        last = max(s["eval_accuracy_by_step"], key=int)
        result = RunResult(
            name=name, method=method, warm_start=ws, seed=seed, lr=lr, dir=str(self.out / name),
            samples_before=samples_before, samples_per_step=c.learner.batch_groups * c.actor.group_size,
            accuracy_by_step={int(k): v for k, v in s["eval_accuracy_by_step"].items()},
            accuracy_by_length={int(k): v for k, v in by_length.get(last, {}).items()},
            reference_logprob=logprob.get(last), wall_seconds=round(time.monotonic() - started, 1),
            samples=s.get("samples", {}))
        log.info("%s: held-out %s (%.0f s)", name, result.accuracy_by_step, result.wall_seconds)
        return result

    def _map(self, jobs: list[Callable[[], RunResult]]) -> list[RunResult]:
        if self.p.parallel <= 1:
            return [job() for job in jobs]
        with ThreadPoolExecutor(self.p.parallel) as pool:
            return list(pool.map(lambda job: job(), jobs))

    def sweep(self) -> tuple[float, list[RunResult]]:
        p = self.p
        if len(p.lrs) == 1:
            return p.lrs[0], []
        runs = self._map([
            (lambda lr=lr, ws=ws, seed=seed: self._one(f"sweep-lr{lr:g}-ws{ws}-seed{seed}", BASELINE, ws, seed, lr,
                                                       p.steps))
            for lr in p.lrs for ws in range(len(p.warm_starts)) for seed in p.sweep_seeds])
        return best_lr(runs, p.lrs), runs

    def srt(self) -> list[RunResult]:
        return self._map([(lambda ws=ws: self._one(f"srt-ws{ws}", "srt", ws, 0, self.p.srt_lr, self.p.srt_steps))
                          for ws in range(len(self.p.warm_starts))])

    def grid(self, lr: float, srt: list[RunResult]) -> list[RunResult]:
        jobs = []
        for ws in range(len(self.p.warm_starts)):
            for seed in range(self.p.seeds):
                for method in self.p.methods:
                    model, before = None, 0
                    if method == "sdzero":
                        model, before = srt_model(srt[ws]), sum(srt[ws].samples.values())
                    jobs.append(lambda m=method, ws=ws, seed=seed, model=model, before=before: self._one(
                        f"{m}-ws{ws}-seed{seed}", m, ws, seed, lr, self.p.steps, model, before))
        return self._map(jobs)


def collapsed(run: RunResult) -> bool:
    """The run ended below the held-out accuracy it started from."""
    return run.final < run.accuracy_by_step[min(run.accuracy_by_step)]


def best_lr(sweep: list[RunResult], lrs: Sequence[float]) -> float:
    """GRPO's lr: the best mean final accuracy among the lrs with no collapsed sweep run;
    where every lr has one, the one with the fewest collapses (then the best mean)."""
    def rank(lr: float) -> tuple[int, float]:
        mine = [r for r in sweep if r.lr == lr]
        return -sum(map(collapsed, mine)), statistics.fmean(r.final for r in mine)

    return max(lrs, key=rank)


def srt_model(run: RunResult) -> str:
    """The HF folder of an srt run's last checkpoint."""
    return str(sorted(Path(run.dir, "checkpoints").glob("step-*"))[-1] / "model")


# ---------------------------------------------------------------------- analysis


def analyse(runs: list[RunResult], methods: Sequence[str]) -> dict[str, Any]:
    """Per method: final accuracy (all, per k) and reference log-prob, mean ± SE over pairs;
    each method's paired difference from GRPO, and HSD − OPSD per k."""
    by: dict[str, dict[tuple[int, int], RunResult]] = {m: {} for m in methods}
    for r in runs:
        by[r.method][(r.warm_start, r.seed)] = r
    pairs = sorted(set.intersection(*(set(v) for v in by.values())))
    lengths = sorted({k for r in runs for k in r.accuracy_by_length})

    def metric(m: str, get: Callable[[RunResult], float | None]) -> list[float]:
        values = [get(by[m][pair]) for pair in pairs]
        return [v for v in values if v is not None] if all(v is not None for v in values) else []

    getters: dict[str, Callable[[RunResult], float | None]] = {
        "final": lambda r: r.final, "reference_logprob": lambda r: r.reference_logprob,
        **{f"k={k}": (lambda r, k=k: r.accuracy_by_length.get(k)) for k in lengths}}
    table = {m: {name: mean_se(v) for name, get in getters.items() if (v := metric(m, get))} for m in methods}
    differences: dict[str, dict[str, Any]] = {}
    for a, b in [(BASELINE, m) for m in methods if m != BASELINE] + [("opsd", "hsd")]:
        if a in by and b in by:
            differences[f"{b} − {a}"] = {name: asdict(d) for name, get in getters.items()
                                         if (d := paired(metric(a, get), metric(b, get))) is not None}
    return {"pairs": len(pairs), "table": table, "differences": differences, "falsified_if": FALSIFICATION,
            "verdict": verdict(differences)}


def verdict(differences: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The pre-stated falsification test, applied: HSD − GRPO at k ≥ 4 beyond 2 SE, and the
    HSD − OPSD gap at k = 6 above k = 1."""
    hsd = differences.get(f"hsd − {BASELINE}", {})
    gap = differences.get("hsd − opsd", {})
    long_k = [hsd[k] for k in ("k=4", "k=6") if k in hsd]
    above = [d["mean"] > 2 * d["se"] for d in long_k]
    grows = gap["k=6"]["mean"] > gap["k=1"]["mean"] if "k=6" in gap and "k=1" in gap else None
    return {"hsd_above_grpo_beyond_2se_at_k>=4": all(above) if above else None,
            "hsd_opsd_gap_grows_with_k": grows,
            "claim_survives": (all(above) and bool(grows)) if above and grows is not None else None}


def markdown(analysis: dict[str, Any], methods: Sequence[str]) -> str:
    table = analysis["table"]
    columns = [c for c in ("final", "k=1", "k=2", "k=4", "k=6", "reference_logprob")
               if any(c in table[m] for m in methods)]
    names = {"final": "held-out (all k)", "reference_logprob": "log p(reference values)"}
    rows = ["| method | " + " | ".join(names.get(c, f"held-out {c}") for c in columns) + " |",
            "|---|" + "---|" * len(columns)]
    for m in methods:
        cells = [f"{table[m][c][0]:.3f} ± {table[m][c][1]:.3f}" if c in table[m] else "" for c in columns]
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    rows += ["", f"Paired differences over {analysis['pairs']} (warm start, seed) pairs, mean ± SE (95% t interval):",
             ""]
    for name, d in analysis["differences"].items():
        rows.append(f"- {name}: " + "; ".join(f"{names.get(c, c)}: {Paired(**d[c]).text()}" for c in columns if c in d))
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------- plots


def plot_accuracy(runs: list[RunResult], methods: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m in methods:
        mine = [r for r in runs if r.method == m]
        # by evaluation step; x: the mean samples generated by then (sdzero's SRT phases differ in size)
        steps = sorted(set.intersection(*(set(r.accuracy_by_step) for r in mine)))
        xs = [statistics.fmean(r.samples_before + s * r.samples_per_step for r in mine) for s in steps]
        stats = [mean_se([r.accuracy_by_step[s] for r in mine]) for s in steps]
        mean = [s[0] for s in stats]
        ax.plot(xs, mean, marker="o", label=f"{m} ({len(mine)} runs)")
        ax.fill_between(xs, [a - s for a, s in stats], [a + s for a, s in stats], alpha=0.2)
    ax.set_xlabel("samples generated (sdzero: from its SRT phase's start)")
    ax.set_ylabel("held-out accuracy (mean ± SE)")
    ax.set_title("Table chain: held-out accuracy against samples")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_alignment(alignments: list[dict[str, Any]], path: Path) -> None:
    """One panel per k: mean |δ| of each teacher at each offset from the divergence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(alignments), figsize=(5.5 * len(alignments), 4), sharey=True, squeeze=False)
    for ax, a in zip(axes[0], alignments, strict=True):
        for teacher, label in (("hsd", "HSD (peer in context)"), ("opsd", "OPSD (answer in context)")):
            points = [(o, v) for o, v in zip(a["offsets"], a[teacher], strict=True) if v is not None]
            ax.plot([o for o, _ in points], [v for _, v in points], marker="o", label=label)
        ax.axvline(0, color="grey", lw=0.8, ls="--")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(f"k = {a['k']} ({a['samples']} failed samples)")
        ax.set_xlabel("token offset from the divergence from the correct chain")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(r"mean $|\delta_t| = |\log \pi_T - \log \pi_\theta|$")
    axes[0][0].legend()
    fig.suptitle("Where each teacher's credit lands on failed samples (warm-started model)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def credit_alignment(model: str, problems: int, ks: Sequence[int] = (1, 6)) -> list[dict[str, Any]]:
    """Both teachers' |δ| around the divergence, per k, on the model's own failed samples."""
    import itertools

    import torch

    from core.engines.hf import HFEngine
    from core.tasks.chain import ChainTask
    from learner.gates import credit_by_offset, failures

    torch.manual_seed(0)
    held_out = list(itertools.islice(ChainTask().problems("test", seed=0), problems))
    f = failures(HFEngine.from_pretrained(model), held_out, samples=8)
    return [credit_by_offset(f, k, OFFSETS) for k in ks]


# ---------------------------------------------------------------------- the whole comparison


def compare(make_config: Callable[[list[str]], Config], protocol: Protocol, out: Path, run: RunFn) -> dict[str, Any]:
    from learner.gates import measure, report

    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    phase_seconds: dict[str, float] = {}

    def timed(phase: str, work: Callable[[], Any]) -> Any:
        begun = time.monotonic()
        result = work()
        phase_seconds[phase] = round(time.monotonic() - begun, 1)
        return result

    e = Experiment(make_config, protocol, out, run)
    lr, sweep = timed("sweep", e.sweep)
    for x in protocol.lrs:
        mine = [r for r in sweep if r.lr == x]
        if mine:
            log.info("sweep lr %g: mean final %.3f, %d of %d runs collapsed", x,
                     statistics.fmean(r.final for r in mine), sum(map(collapsed, mine)), len(mine))
    log.info("learning rate %g (swept %s)", lr, protocol.lrs)
    srt = timed("srt", e.srt) if "sdzero" in protocol.methods else []
    srt_gates = timed("srt_gates", lambda: [report(measure(srt_model(r), problems=protocol.alignment_problems // 4,
                                                           reviser_path=srt_model(r))) for r in srt])
    runs = timed("grid", lambda: e.grid(lr, srt))
    alignment = timed("mechanism", lambda: {str(ws): credit_alignment(model, protocol.alignment_problems)
                                            for ws, model in enumerate(protocol.warm_starts)})
    analysis = analyse(runs, protocol.methods)
    results = {"protocol": asdict(protocol), "lr": lr, "sweep": [asdict(r) for r in sweep],
               "srt": [asdict(r) for r in srt], "srt_gates": srt_gates, "runs": [asdict(r) for r in runs],
               "credit_alignment": alignment, "analysis": analysis,
               "phase_seconds": phase_seconds, "wall_seconds": round(time.monotonic() - started, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(markdown(analysis, protocol.methods))
    plot_accuracy(runs, protocol.methods, out / "accuracy.png")
    plot_alignment(alignment["0"], out / "credit_alignment.png")
    return results
