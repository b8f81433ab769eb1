"""`hsd compare`: the arms side by side on a chain task (the config's actor.task), paired, as the claim needs.

::

    1 SRT          SD-Zero's phase 1 from each warm start (learner.srt_phase: collect verified
                   revisions, stage 1 then stage 2) ──► SRT model: sdzero's student and
                   teacher; its attempts + revisions count in sdzero's sample budget (with
                   ``equal_samples`` every other arm gets as many more steps); gates G1–G4
    2 lr sweeps    every arm × lrs × warm starts × sweep seeds ──► the arm's lr (best mean
                   final held-out among the lrs none of whose sweep runs collapsed)
    3 grid         warm start × seed × arm, one `hsd run` each at the arm's lr
    4 mechanism    on each warm start, before RL: |δ| of both teachers around the mistake,
                   k = 1 (control) and k = 6
    5 staleness    grpo and hsd at each η on every pair, and repeats at η = 0
                   (services.apps.staleness_study)
    6 analysis     per arm: final held-out accuracy (all, per k), reference log-prob;
                   paired differences over (warm start, seed) with 95% t intervals and
                   their slope over k (services.apps.paired), read against the criteria

The arms (services.apps.arms) are configs of the existing methods. Runs of one
(warm start, seed) pair differ only in the arm's settings and lr (and, for sdzero, the
model: its warm start's SRT model); they draw the same prompts and are evaluated on the
same held-out problems with the same sampling seed, so their differences are paired.
Every arm gets its own lr by the same sweep and rule, so that no arm is compared at an lr
tuned for another: the sweep's seeds are not the grid's (the lr is chosen on other runs
than the ones compared), on every warm start, with more than one seed each; an lr at which
any sweep run ends below where it started is out (with one seed per warm start, 3e-4 won
GRPO's sweep and then collapsed 2 of 5 grid runs on one warm start). Every run gets the
same response budget, one that holds an SRT model's attempt, revision phrase and revision
(≈ 140 tokens at k = 6); the other arms stop at their end token well before it.

Written to the output dir: ``runs.jsonl`` (the ledger of finished runs, :class:`Experiment`),
``results.json`` (protocol, every run, the analysis),
``table.md``, ``accuracy.png`` (accuracy against samples generated, mean ± SE),
``forest.png`` (paired differences with 95% intervals, per k), ``staleness.png`` (accuracy
against η and against wall-clock), ``credit_alignment.png`` (the mechanism, per k).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from core.config import Config
from core.method_registry import METHOD_REGISTRY
from services.apps.arms import ARMS, BASELINE, CONTROLS, Arm, contrast_name, contrasts
from services.apps.compare_plots import plot_accuracy, plot_alignment, plot_forest, plot_staleness
from services.apps.paired import Paired, mean_se, one_sample, paired, slope
from services.apps.run_result import RunResult, SRTRun, asynchrony
from services.apps.staleness_study import analyse_staleness, staleness_markdown

log = logging.getLogger(__name__)
OFFSETS = range(-6, 9)  # token offsets from the mistake in the credit-alignment plot
LONG = ("k=4", "k=6")  # the chain lengths where the claim lives (the answer says nothing of the path)
# stated before any result (docs/method-comparison.md): each criterion is a 95% paired interval clear of 0
CRITERIA = {
    "hsd_above_grpo": "HSD − GRPO above 0 at k = 4 and at k = 6",
    "controls_below_hsd": "HSD − each control (GRPO + KL to θ0 at β = 0.01 and 0.1, HSD with a placebo peer) "
                          "above 0 at k = 6; where one is not, HSD's lead is not shown to be hindsight: the "
                          "pull to θ0 or any fluent solution in context recovers it (regularisation)",
    "gap_grows_with_k": "the slope over k of HSD − OPSD above 0 (a per-pair regression on k, not two points)",
}
FALSIFICATION = "; ".join(f"not ({c})" for c in CRITERIA.values()) + " (any one falsifies the claim)"
# SD-Zero's, stated before its run (docs/method-comparison.md), read where sdzero and grpo ran
SDZERO_RELATIVE_GAIN = 0.10
SDZERO_CRITERIA = {
    "sdzero_gain_shrinks_with_k": "the slope over k of SD-Zero − GRPO below 0: SD-Zero's gain over GRPO is "
                                  "largest at k = 1 and shrinks with k (the opposite of HSD's)",
    "sdzero_above_base": f"SD-Zero's final held-out accuracy over its warm start's, − {1 + SDZERO_RELATIVE_GAIN:g}, "
                         f"above 0: at least {SDZERO_RELATIVE_GAIN:.0%} relative over the base model",
}


@dataclass(frozen=True)
class Protocol:
    warm_starts: tuple[str, ...]  # model folders, one per warm-start seed
    arms: tuple[str, ...] = tuple(ARMS)
    seeds: int = 5
    steps: int = 12
    eval_every: int = 6
    eval_problems: int = 1024
    lrs: tuple[float, ...] = (1e-4, 2e-4, 3e-4)
    # an arm whose best lr is the sweep's largest sweeps on, a step of the grid's last spacing
    # at a time, at most this many steps: its optimum is then bracketed or the limit is said
    lr_extensions: int = 2
    sweep_seeds: tuple[int, ...] = (100, 101)
    srt_target: int = 1000  # verified revisions SD-Zero's phase 1 collects (the reference: 6,000 for a 4B model)
    srt_stage2: int = 200  # of them, stage 2's quota (the reference: 1,000); stage 1 takes the rest
    srt_epochs: int = 3  # a stage (the reference's)
    srt_lr: float = 1e-4  # supervised; 3e-4 lowered the student and the reviser (docs/method-comparison.md)
    equal_samples: bool = False  # every arm not starting from the SRT model runs its phase's samples longer
    max_response_tokens: int = 160
    alignment_problems: int = 512
    actors: int = 2
    parallel: int = 1  # runs at a time (a GPU machine's cores); 1 on a laptop
    staleness: tuple[int, ...] = (0, 1, 2, 4)  # η of the synchronous-vs-asynchronous study (empty: none)
    staleness_arms: tuple[str, ...] = ("grpo", "hsd")
    repeats: int = 3  # pairs run twice at η = 0 (is a synchronous run reproducible bit for bit?)

    def quick(self) -> Protocol:
        """The whole pipeline at the smallest size, for the test suite."""
        return replace(self, warm_starts=self.warm_starts[:1], arms=("grpo", "grpo-kl0.1", "hsd-placebo", "sdzero"),
                       seeds=2, steps=1,
                       eval_every=1, eval_problems=32, lrs=self.lrs[:1], srt_target=8, srt_stage2=4, srt_epochs=1,
                       alignment_problems=32,
                       actors=1, staleness=(0, 1), repeats=1)


# ---------------------------------------------------------------------- running


RunFn = Callable[[Config], dict[str, Any]]  # one `hsd run` of a config → its summary
SRTFn = Callable[..., dict[str, Any]]  # (model_in, out, task, target=, stage2_size=, epochs=, lr=, seed=) → srt.json


LEDGER = "runs.jsonl"  # in the output dir: one line per finished run, what resuming needs


class Experiment:
    """Runs the protocol's phases. Every finished run is appended to the output dir's
    ledger (``runs.jsonl``: its name, a key of its config hash, steps and start model, and
    its :class:`RunResult`), and a run whose key is in the ledger is not run again — so a
    comparison of hours goes on where it stopped, in the same dir (a run dir left with a
    summary also counts) or in a new one given only the ledger, on any machine: the key
    holds the start model's weights digest, not its path. The SRT phase is the one
    exception: sdzero starts from its model, so it is reused only where its dir holds the
    model of the same settings; it is seeded, so that running it again rebuilds the same
    weights, and sdzero's keys hold the SRT weights' digest, so that other weights mean new
    sdzero runs. ``srt_phase`` is :func:`learner.srt_phase.srt_phase` or a stand-in with
    its signature and report."""

    def __init__(self, make_config: Callable[[list[str]], Config], protocol: Protocol, out: Path,
                 run: RunFn, srt_phase: SRTFn | None = None) -> None:
        self.make_config, self.p, self.out, self._run = make_config, protocol, out, run
        if srt_phase is None:
            from learner.srt_phase import srt_phase
        self._srt_phase = srt_phase
        base = make_config([])
        self.task, self.samples_per_step = base.actor.task, base.learner.batch_groups * base.actor.group_size
        self.ledger: dict[str, dict[str, Any]] = {}
        self._identities: dict[str, str] = {}  # model path → weights_identity, hashed once
        out.mkdir(parents=True, exist_ok=True)
        if (out / LEDGER).exists():
            for number, line in enumerate((out / LEDGER).read_text().splitlines(), start=1):
                try:
                    entry = json.loads(line)
                    self.ledger[entry["name"]] = entry
                except (json.JSONDecodeError, KeyError, TypeError):  # a line cut short by an interrupted write
                    if line.strip():
                        log.warning("%s line %d is not a run's record; that run will run again", LEDGER, number)

    def _one(self, name: str, a: Arm, ws: int, seed: int, lr: float, steps: int,
             model: str | None = None, samples_before: int = 0, staleness: int | None = None,
             model_sha256: str | None = None) -> RunResult:
        p = self.p
        c = self.make_config([*([] if staleness is None else [f"learner.max_staleness={staleness}"]),
            f'algorithm.method="{a.method}"', *a.overrides, f"run.seed={seed}", f"run.steps={steps}",
            f"learner.lr={lr}", f'run.name="{name}"', f'run.dir="{self.out / name}"',
            f"learner.eval_every={p.eval_every}", f"learner.eval_problems={p.eval_problems}", "learner.eval_samples=1",
            f'model.path="{model or p.warm_starts[ws]}"', f"model.max_response_tokens={p.max_response_tokens}"])
        key = run_key(c, model_sha256 or self._weights_identity(model or p.warm_starts[ws]))
        kept = self.ledger.get(name)
        if kept is not None and kept["key"] == key:
            log.info("%s: in the ledger with this config; its result is reused", name)
            return RunResult.from_json(kept["result"])
        started = time.monotonic()
        s = finished_run(c, self.out / name)
        if s is None:
            if (self.out / name).exists():  # a run an interrupted comparison left unfinished
                log.warning("%s: unfinished or run with another config; running it again", name)
                shutil.rmtree(self.out / name)
            s = self._run(c)
        else:
            log.info("%s: finished earlier with this config; its summary is reused", name)
        by_length = s.get("eval_by_length_by_step", {})
        logprob = s.get("eval_reference_logprob_by_step", {})
        last = max(s["eval_accuracy_by_step"], key=int)
        result = RunResult(
            name=name, arm=a.name, method=a.method, warm_start=ws, seed=seed, lr=lr, dir=str(self.out / name),
            samples_before=samples_before, samples_per_step=c.learner.batch_groups * c.actor.group_size,
            accuracy_by_step={int(k): v for k, v in s["eval_accuracy_by_step"].items()},
            accuracy_by_length={int(k): v for k, v in by_length.get(last, {}).items()},
            reference_logprob=logprob.get(last), wall_seconds=round(time.monotonic() - started, 1),
            samples=s.get("samples", {}), max_staleness=c.learner.max_staleness,
            peer_is_reference=s.get("peer_is_reference"), **asynchrony(self.out / name, s))
        log.info("%s: held-out %s (%.0f s)", name, result.accuracy_by_step, result.wall_seconds)
        self.ledger[name] = {"name": name, "key": key, "result": asdict(result)}
        ledger = self.out / LEDGER
        torn = ledger.exists() and not ledger.read_bytes().endswith(b"\n") and ledger.stat().st_size > 0
        with ledger.open("a") as f:  # after a line cut short, on a line of its own
            f.write(("\n" if torn else "") + json.dumps(self.ledger[name]) + "\n")
        return result

    def _weights_identity(self, path: str) -> str:
        if path not in self._identities:
            self._identities[path] = weights_identity(path)
        return self._identities[path]

    def _map(self, jobs: list[Callable[[], RunResult]]) -> list[RunResult]:
        if self.p.parallel <= 1:
            return [job() for job in jobs]
        with ThreadPoolExecutor(self.p.parallel) as pool:
            return list(pool.map(lambda job: job(), jobs))

    def _start(self, arm: str, ws: int, srt: list[SRTRun]) -> dict[str, Any]:
        """What an arm starts from on a warm start and how long it runs (``_one``'s model and
        steps arguments), and the samples spent before it: sdzero's start is that warm
        start's SRT model; with ``equal_samples`` every other arm runs as many more steps
        as the SRT phase's samples fill."""
        if METHOD_REGISTRY[ARMS[arm].method].starts_from_srt:
            return {"model": srt[ws].dir, "samples_before": srt[ws].total_samples,
                    "model_sha256": srt[ws].weights_sha256, "steps": self.p.steps}
        extra = math.ceil(srt[ws].total_samples / self.samples_per_step) if self.p.equal_samples and srt else 0
        return {"steps": self.p.steps + extra}

    def sweep(self, srt: list[SRTRun]) -> tuple[dict[str, float], list[RunResult]]:
        """Every arm's lr by the same sweep and rule (:func:`best_lr`): the protocol's lrs,
        then, for an arm whose best is the largest so far, one step of the grid's last
        spacing further, up to ``lr_extensions`` steps (an optimum at the edge of the
        grid is not an optimum)."""
        p = self.p
        if len(p.lrs) == 1:
            return dict.fromkeys(p.arms, p.lrs[0]), []
        swept = {arm: list(p.lrs) for arm in p.arms}

        def jobs(arm: str, lrs: Sequence[float]) -> list[Callable[[], RunResult]]:
            out = []
            for ws in range(len(p.warm_starts)):
                start = self._start(arm, ws, srt)
                out += [(lambda lr=lr, ws=ws, seed=seed, start=start: self._one(
                    f"sweep-{arm}-lr{lr:g}-ws{ws}-seed{seed}", ARMS[arm], ws, seed, lr, **start))
                    for lr in lrs for seed in p.sweep_seeds]
            return out

        runs = self._map([job for arm in p.arms for job in jobs(arm, p.lrs)])
        step = p.lrs[-1] - p.lrs[-2]
        for _ in range(p.lr_extensions):
            at_edge = [arm for arm in p.arms
                       if best_lr([r for r in runs if r.arm == arm], swept[arm]) == swept[arm][-1]]
            if not at_edge:
                break
            for arm in at_edge:
                swept[arm].append(round(swept[arm][-1] + step, 12))
                log.info("sweep %s: its best lr is the largest swept; sweeping on at %g", arm, swept[arm][-1])
            runs += self._map([job for arm in at_edge for job in jobs(arm, swept[arm][-1:])])
        return {arm: best_lr([r for r in runs if r.arm == arm], swept[arm]) for arm in p.arms}, runs

    def srt(self) -> list[SRTRun]:
        """SD-Zero's phase 1 on each warm start, seeded by its index."""
        return [self._srt_one(ws) for ws in range(len(self.p.warm_starts))]

    def _srt_one(self, ws: int) -> SRTRun:
        p, out = self.p, self.out / f"srt-ws{ws}"
        settings = {"target": p.srt_target, "stage2_size": p.srt_stage2, "epochs": p.srt_epochs, "lr": p.srt_lr,
                    "seed": ws}
        written = out / "srt.json"
        report = json.loads(written.read_text()) if written.exists() and (out / "model.safetensors").exists() else {}
        if {k: report.get(k) for k in ("model_in", "task", *settings)} != {
                "model_in": p.warm_starts[ws], "task": self.task, **settings}:
            log.info("srt-ws%d: SD-Zero's phase 1 (%s)", ws, settings)
            report = self._srt_phase(p.warm_starts[ws], out, self.task, **settings)
        else:
            log.info("srt-ws%d: its model with these settings is in %s; reused", ws, out)
        from learner.checkpoint import file_sha256

        collected = report["collected"]
        return SRTRun(ws, str(out), {"attempts": collected["attempts"], "revisions": collected["revisions_sampled"]},
                      file_sha256(out / "model.safetensors"), report)

    def grid(self, lrs: dict[str, float], srt: list[SRTRun]) -> list[RunResult]:
        jobs = []
        for ws in range(len(self.p.warm_starts)):
            for seed in range(self.p.seeds):
                for arm in self.p.arms:
                    start = self._start(arm, ws, srt)
                    jobs.append(lambda arm=arm, ws=ws, seed=seed, start=start: self._one(
                        f"{arm}-ws{ws}-seed{seed}", ARMS[arm], ws, seed, lrs[arm], **start))
        return self._map(jobs)


    def staleness_study(self, lrs: dict[str, float], grid: list[RunResult],
                        srt: list[SRTRun]) -> tuple[list[RunResult], list[RunResult]]:
        """The study's arms at every η of the protocol on every pair, at the arm's lr (the
        grid's runs stand for the η they ran at), then the first ``repeats`` pairs at η = 0
        once more. Returns (the study's runs, the repeats)."""
        p = self.p
        arms = [a for a in p.staleness_arms if a in p.arms]
        have = {(r.arm, r.max_staleness, r.warm_start, r.seed) for r in grid}
        pairs = [(ws, seed) for ws in range(len(p.warm_starts)) for seed in range(p.seeds)]

        def job(arm: str, eta: int, ws: int, seed: int, tag: str = "") -> Callable[[], RunResult]:
            return lambda: self._one(f"{arm}-eta{eta}-ws{ws}-seed{seed}{tag}", ARMS[arm], ws, seed, lrs[arm],
                                     staleness=eta, **self._start(arm, ws, srt))

        fresh = [job(arm, eta, ws, seed) for eta in p.staleness for ws, seed in pairs for arm in arms
                 if (arm, eta, ws, seed) not in have]
        runs = [r for r in grid if r.arm in arms and r.max_staleness in p.staleness] + self._map(fresh)
        again = [job(arm, 0, ws, seed, "-repeat") for ws, seed in pairs[: p.repeats] for arm in arms] \
            if 0 in p.staleness else []
        return runs, self._map(again)


def run_key(config: Config, model_identity: str | None = None) -> str:
    """What makes two runs the same run: the hash of the config's fields that differ from
    their defaults (so that a config field added later, at a default, keeps a ledger of
    hours valid), its steps, and the start model's identity (:func:`weights_identity`) in
    place of its path, so that a ledger is valid wherever the same weights lie."""
    from core.config import config_hash

    if model_identity is not None:
        config = config.model_copy(update={"model": config.model.model_copy(update={"path": "weights"})})
    return f"{config_hash(config, changed_only=True)}:{config.run.steps}:{model_identity}"


def weights_identity(path: str) -> str:
    """A start model as a ledger key holds it: the sha256 over the sha256s of its
    ``*.safetensors`` files where ``path`` is a folder that has them (the same weights in
    another checkout, on another machine, key alike), else ``path`` as given (a hub id)."""
    files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
    if not files:
        return path
    from learner.checkpoint import file_sha256

    return hashlib.sha256("".join(file_sha256(f) for f in files).encode()).hexdigest()


def finished_run(config: Config, run_dir: Path) -> dict[str, Any] | None:
    """The summary of a run that finished in ``run_dir`` with this config (its hashed fields
    and steps), so that a comparison interrupted after hours goes on where it stopped."""
    from core.config import config_hash, load_config

    summary, written = run_dir / "summary.json", run_dir / "config.toml"
    if not (summary.exists() and written.exists()):
        return None
    earlier = load_config(written, environ={})
    if config_hash(earlier) != config_hash(config) or earlier.run.steps != config.run.steps:
        return None
    return json.loads(summary.read_text())


def collapsed(run: RunResult) -> bool:
    """The run ended below the held-out accuracy it started from."""
    return run.final < run.accuracy_by_step[min(run.accuracy_by_step)]


def best_lr(sweep: list[RunResult], lrs: Sequence[float]) -> float:
    """An arm's lr: the best mean final accuracy among the lrs with no collapsed sweep run;
    where every lr has one, the one with the fewest collapses (then the best mean)."""
    def rank(lr: float) -> tuple[int, float]:
        mine = [r for r in sweep if r.lr == lr]
        return -sum(map(collapsed, mine)), statistics.fmean(r.final for r in mine)

    return max(lrs, key=rank)


# ---------------------------------------------------------------------- analysis


def analyse(runs: list[RunResult], arms: Sequence[str]) -> dict[str, Any]:
    """Per arm: final accuracy (all, per k), reference log-prob and (HSD arms) the share of
    distilled samples whose peer is the reference solution, mean ± SE over pairs; the
    paired differences of :func:`services.apps.arms.contrasts`, each per column and as
    a slope over k; the verdict against :data:`CRITERIA`."""
    by: dict[str, dict[tuple[int, int], RunResult]] = {m: {} for m in arms}
    for r in runs:
        by[r.arm][(r.warm_start, r.seed)] = r
    pairs = sorted(set.intersection(*(set(v) for v in by.values())))
    lengths = sorted({k for r in runs for k in r.accuracy_by_length})

    def metric(m: str, get: Callable[[RunResult], float | None]) -> list[float]:
        values = [get(by[m][pair]) for pair in pairs]
        return [v for v in values if v is not None] if all(v is not None for v in values) else []

    getters: dict[str, Callable[[RunResult], float | None]] = {
        "final": lambda r: r.final, "reference_logprob": lambda r: r.reference_logprob,
        **{f"k={k}": (lambda r, k=k: r.accuracy_by_length.get(k)) for k in lengths}}
    described = getters | {"peer_is_reference": lambda r: r.peer_is_reference}  # the arms' runs, not compared
    table = {m: {name: mean_se(v) for name, get in described.items() if (v := metric(m, get))} for m in arms}
    differences: dict[str, dict[str, Any]] = {}
    for b, a in contrasts(list(arms)):
        d = {name: asdict(x) for name, get in getters.items() if (x := paired(metric(a, get), metric(b, get)))}
        trend = slope([by[a][p].accuracy_by_length for p in pairs], [by[b][p].accuracy_by_length for p in pairs])
        if trend is not None:
            d["slope_k"] = asdict(trend)
        differences[contrast_name(b, a)] = d
    over_base = None
    if "sdzero" in arms and BASELINE in arms:  # the base model: the warm start, at a grpo run's step 0
        over_base = one_sample([by["sdzero"][p].final / by[BASELINE][p].accuracy_by_step[0]
                                - (1 + SDZERO_RELATIVE_GAIN) for p in pairs])
    return {"pairs": len(pairs), "table": table, "differences": differences, "criteria": CRITERIA | SDZERO_CRITERIA,
            "falsified_if": FALSIFICATION, "sdzero_over_base": asdict(over_base) if over_base else None,
            "verdict": verdict(differences, over_base)}


def _clear_above_zero(differences: dict[str, dict[str, Any]], name: str, column: str) -> bool | None:
    entry = differences.get(name, {}).get(column)
    return None if entry is None else entry["low"] > 0


def verdict(differences: dict[str, dict[str, Any]], sdzero_over_base: Paired | None = None) -> dict[str, Any]:
    """:data:`CRITERIA` and :data:`SDZERO_CRITERIA` applied: each True (met), False (not) or
    None (its arms or k's did not run); a claim survives only if every one of its criteria
    is met."""
    long_k = [_clear_above_zero(differences, contrast_name("hsd", BASELINE), k) for k in LONG]
    controls = {c: _clear_above_zero(differences, contrast_name("hsd", c), "k=6") for c in CONTROLS}
    ran = [v for v in controls.values() if v is not None]
    met = {
        "hsd_above_grpo": None if None in long_k else all(long_k),
        "controls_below_hsd": all(ran) if ran else None,
        "gap_grows_with_k": _clear_above_zero(differences, contrast_name("hsd", "opsd"), "slope_k"),
    }
    recovered = [c for c, v in controls.items() if v is False]
    shrinks = differences.get(contrast_name("sdzero", BASELINE), {}).get("slope_k")
    sdzero = {"sdzero_gain_shrinks_with_k": None if shrinks is None else shrinks["high"] < 0,
              "sdzero_above_base": None if sdzero_over_base is None else sdzero_over_base.low > 0}
    return {**met, "controls_recovering_hsd_lead": recovered,
            "claim_survives": None if None in met.values() else all(met.values()), **sdzero,
            "sdzero_claim_survives": None if None in sdzero.values() else all(sdzero.values())}


def markdown(analysis: dict[str, Any], arms: Sequence[str]) -> str:
    table = analysis["table"]
    columns = [c for c in ("final", "k=1", "k=2", "k=4", "k=6", "reference_logprob", "peer_is_reference")
               if any(c in table[m] for m in arms)]
    names = {"final": "held-out (all k)", "reference_logprob": "log p(reference values)", "slope_k": "slope over k",
             "peer_is_reference": "peer is the reference"}
    rows = ["| arm | " + " | ".join(names.get(c, f"held-out {c}") for c in columns) + " |",
            "|---|" + "---|" * len(columns)]
    for m in arms:
        cells = [f"{table[m][c][0]:.3f} ± {table[m][c][1]:.3f}" if c in table[m] else "" for c in columns]
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    rows += ["", f"Paired differences over {analysis['pairs']} (warm start, seed) pairs, mean ± SE (95% t interval);"
             " slope over k: per pair, least squares on k, then over pairs:", ""]
    for name, d in analysis["differences"].items():
        rows.append(f"- {name}: " + "; ".join(f"{names.get(c, c)}: {Paired(**d[c]).text()}"
                                               for c in [*columns, "slope_k"] if c in d))
    if analysis.get("sdzero_over_base"):
        rows.append(f"- sdzero ÷ its warm start − {1 + SDZERO_RELATIVE_GAIN:g}: "
                    f"{Paired(**analysis['sdzero_over_base']).text()}")
    rows += ["", "Criteria (each a 95% interval clear of 0): "
             + "; ".join(f"{k}: {analysis['verdict'][k]}" for k in CRITERIA)
             + f"; claim survives: {analysis['verdict']['claim_survives']}"]
    if "sdzero" in arms:
        rows.append("SD-Zero's criteria: " + "; ".join(f"{k}: {analysis['verdict'][k]}" for k in SDZERO_CRITERIA)
                    + f"; SD-Zero's claim survives: {analysis['verdict']['sdzero_claim_survives']}")
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------- the mechanism


def credit_alignment(model: str, problems: int, task_name: str = "chain",
                     ks: Sequence[int] = (1, 6)) -> list[dict[str, Any]]:
    """Both teachers' |δ| around the mistake, per k, on the model's own failed samples."""
    import itertools

    import torch

    from core.engines.hf import HFEngine
    from core.tasks import make_task
    from learner.gates import credit_by_offset, failures

    torch.manual_seed(0)
    task = make_task(task_name)
    held_out = list(itertools.islice(task.problems("test", seed=0), problems))
    f = failures(HFEngine.from_pretrained(model), held_out, samples=8, task=task)
    return [credit_by_offset(f, k, OFFSETS) for k in ks]


def held_out_coverage(task_name: str, problems: int) -> dict[str, dict[str, int]]:
    """Per path length k of the held-out set every run is evaluated on (the first
    ``problems`` of the test split, seed 0, as learner.evaluation draws them): how many
    problems and how many distinct ones. Few distinct problems at a k make its accuracy a
    measurement of those few."""
    import itertools

    from core.tasks import make_task

    drawn = list(itertools.islice(make_task(task_name).problems("test", seed=0), problems))
    by_k: dict[str, list[str]] = {}
    for p in drawn:
        if "k" in p.fields:
            by_k.setdefault(f"k={p.fields['k']}", []).append(p.prompt_id)
    return {k: {"problems": len(ids), "distinct": len(set(ids))} for k, ids in sorted(by_k.items())}


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
    task = make_config([]).actor.task
    srt = timed("srt", e.srt) if any(METHOD_REGISTRY[ARMS[a].method].starts_from_srt for a in protocol.arms) else []
    srt_gates = timed("srt_gates", lambda: [report(measure(r.dir, problems=protocol.alignment_problems // 4,
                                                           reviser_path=r.dir, task_name=task)) for r in srt])
    lrs, sweep = timed("sweep", lambda: e.sweep(srt))
    for arm in protocol.arms:
        for x in sorted({r.lr for r in sweep if r.arm == arm}):
            mine = [r for r in sweep if r.arm == arm and r.lr == x]
            if mine:
                log.info("sweep %s lr %g: mean final %.3f, %d of %d runs collapsed", arm, x,
                         statistics.fmean(r.final for r in mine), sum(map(collapsed, mine)), len(mine))
    log.info("learning rates %s (swept %s)", lrs, protocol.lrs)
    runs = timed("grid", lambda: e.grid(lrs, srt))
    alignment = timed("mechanism", lambda: {str(ws): credit_alignment(model, protocol.alignment_problems, task)
                                            for ws, model in enumerate(protocol.warm_starts)})
    analysis = analyse(runs, protocol.arms)
    study, repeats = timed("staleness", lambda: e.staleness_study(lrs, runs, srt)) if protocol.staleness else ([], [])
    staleness = analyse_staleness(study, repeats, [a for a in protocol.staleness_arms if a in protocol.arms],
                                  protocol.staleness) if study else None
    results = {"protocol": asdict(protocol), "lrs": lrs, "sweep": [asdict(r) for r in sweep],
               "held_out": held_out_coverage(task, protocol.eval_problems),
               "srt": [asdict(r) for r in srt], "srt_gates": srt_gates, "runs": [asdict(r) for r in runs],
               "credit_alignment": alignment, "analysis": analysis,
               "staleness": {"runs": [asdict(r) for r in study], "repeats": [asdict(r) for r in repeats],
                             "analysis": staleness},
               "phase_seconds": phase_seconds, "wall_seconds": round(time.monotonic() - started, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(markdown(analysis, protocol.arms)
                                  + (f"\n## Synchronous vs asynchronous\n\n{staleness_markdown(staleness)}"
                                     if staleness else ""))
    if staleness:
        plot_staleness(study, protocol.staleness, out / "staleness.png")
    plot_accuracy(runs, protocol.arms, out / "accuracy.png")
    plot_forest(analysis["differences"], [contrast_name(b, a) for b, a in contrasts(list(protocol.arms))],
                out / "forest.png")
    plot_alignment(alignment["0"], out / "credit_alignment.png")
    return results
