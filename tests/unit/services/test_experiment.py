"""The comparison's statistics and analysis against independent computations: Student's t
quantiles from published tables, paired differences and slopes by numpy, the pre-stated
verdict, and every arm's own lr sweep."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from services.apps.arms import ARMS, contrasts
from services.apps.experiment import analyse, best_lr, markdown, verdict
from services.apps.paired import Paired, paired, slope, t_quantile
from services.apps.run_result import RunResult


def make_config(overrides: list[str]):
    """A comparison's config of one run, as `hsd compare` builds it (defaults, then the method's)."""
    from core.config import load_config
    from methods import configure

    c = load_config(environ={}, overrides=overrides)
    configure(c)
    return c


@pytest.mark.parametrize(("p", "df", "expected"), [
    (0.975, 1, 12.7062), (0.975, 4, 2.7764), (0.975, 9, 2.2622), (0.975, 30, 2.0423), (0.95, 9, 1.8331),
    (0.5, 5, 0.0)])
def test_t_quantile_matches_the_published_table(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=2e-4)


def test_paired_difference_mean_se_and_interval_by_numpy():
    rng = np.random.default_rng(0)
    a = rng.random(10)
    b = a + 0.05 + 0.02 * rng.standard_normal(10)
    d = b - a
    got = paired(list(a), list(b))
    se = d.std(ddof=1) / np.sqrt(10)
    assert got.n == 10 and got.mean == pytest.approx(d.mean()) and got.se == pytest.approx(se)
    assert (got.low, got.high) == pytest.approx((d.mean() - 2.2622 * se, d.mean() + 2.2622 * se), abs=1e-5)
    assert paired([0.1], [0.2]) is None  # one pair: no spread to estimate


def _run(arm: str, ws: int, seed: int, final: float, k6: float, k1: float = 0.9) -> RunResult:
    return RunResult(name=f"{arm}-{ws}-{seed}", arm=arm, method=ARMS[arm].method, warm_start=ws, seed=seed,
                     lr=1e-4, dir="",
                     samples_before=0, samples_per_step=128, accuracy_by_step={0: 0.5, 12: final},
                     accuracy_by_length={1: k1, 6: k6}, reference_logprob=-0.1 - final, wall_seconds=1.0)


def test_analysis_pairs_runs_by_warm_start_and_seed():
    runs = []
    for ws in range(2):
        for seed in range(3):
            base = 0.6 + 0.1 * ws + 0.01 * seed  # pair effects the pairing must cancel
            runs += [_run("grpo", ws, seed, base, base - 0.1), _run("hsd", ws, seed, base + 0.03 + 0.001 * seed,
                                                                     base - 0.05),
                     _run("opsd", ws, seed, base + 0.01, base - 0.09)]
    runs.append(_run("hsd", 5, 0, 0.99, 0.99))  # no partner: left out
    for r in runs:
        if r.arm == "hsd":
            r.peer_is_reference = 0.3 + 0.1 * r.warm_start
    a = analyse(runs, ["grpo", "opsd", "hsd"])
    # how often an HSD run's peer was the reference: described for the arm, never differenced
    assert a["table"]["hsd"]["peer_is_reference"][0] == pytest.approx(0.35)
    assert "peer_is_reference" not in a["table"]["grpo"]
    assert all("peer_is_reference" not in d for d in a["differences"].values())
    assert a["pairs"] == 6
    diff = a["differences"]["hsd − grpo"]["final"]
    assert diff["mean"] == pytest.approx(0.031) and diff["n"] == 6
    assert diff["se"] == pytest.approx(np.std([0.03 + 0.001 * s for s in range(3)] * 2, ddof=1) / np.sqrt(6))
    assert a["differences"]["hsd − opsd"]["k=6"]["mean"] == pytest.approx(0.04)
    assert a["table"]["grpo"]["final"][0] == pytest.approx(np.mean([0.6 + 0.1 * w + 0.01 * s
                                                                     for w in range(2) for s in range(3)]))
    # 0 at k = 1, 0.04 at k = 6 in every pair: a slope of 0.008 a step of k with no spread
    assert a["differences"]["hsd − opsd"]["slope_k"]["mean"] == pytest.approx(0.008)
    assert a["verdict"]["gap_grows_with_k"] is True
    assert list(a["differences"]) == ["opsd − grpo", "hsd − grpo", "hsd − opsd"] == [
        f"{b} − {a_}" for b, a_ in contrasts(["grpo", "opsd", "hsd"])]
    text = markdown(a, ["grpo", "opsd", "hsd"])
    hsd = np.array([r.final for r in runs[:-1] if r.method == "hsd"])
    assert f"| hsd | {hsd.mean():.3f} ± {hsd.std(ddof=1) / np.sqrt(6):.3f} |" in text
    assert "hsd − grpo: held-out (all k): +0.031 ± 0.000" in text


def test_slope_over_k_is_each_pair_s_least_squares_slope_then_a_t_interval():
    rng = np.random.default_rng(1)
    ks = [1, 2, 4, 6]
    a = [{k: 0.9 - 0.05 * k + 0.01 * rng.standard_normal() for k in ks} for _ in range(8)]
    true = [0.01 + 0.004 * rng.standard_normal() for _ in range(8)]
    b = [{k: x[k] + 0.02 + s * k for k in ks} for x, s in zip(a, true, strict=True)]
    got = slope(a, b)
    want = np.array(true)  # d(k) is exactly linear in k per pair: its fit returns the slope
    assert got.n == 8 and got.mean == pytest.approx(want.mean()) and got.se == pytest.approx(
        want.std(ddof=1) / np.sqrt(8))
    assert got.low == pytest.approx(want.mean() - t_quantile(0.975, 7) * got.se)
    assert slope([{1: 0.5}], [{1: 0.6}]) is None  # one k: no slope


def _d(mean: float, se: float) -> dict:
    return {"n": 10, "mean": mean, "se": se, "low": mean - 2 * se, "high": mean + 2 * se}


def _differences(k4=(0.05, 0.01), k6=(0.06, 0.02), placebo=(0.05, 0.01), kl=(0.05, 0.01), gap=(0.01, 0.003)):
    return {"hsd − grpo": {"k=4": _d(*k4), "k=6": _d(*k6)},
            "hsd − hsd-placebo": {"k=6": _d(*placebo)}, "hsd − grpo-kl0.1": {"k=6": _d(*kl)},
            "hsd − opsd": {"slope_k": _d(*gap)}}


@pytest.mark.parametrize(("changes", "survives", "recovering"), [
    ({}, True, []),
    ({"k4": (0.05, 0.03)}, False, []),  # k = 4 inside the noise
    ({"placebo": (0.01, 0.02)}, False, ["hsd-placebo"]),  # a placebo peer recovers the lead: not hindsight
    ({"kl": (-0.01, 0.01)}, False, ["grpo-kl0.1"]),  # so does a KL pull to θ0 alone
    ({"gap": (0.01, 0.01)}, False, []),  # the HSD − OPSD slope over k not resolved
])
def test_verdict_applies_the_stated_criteria(changes, survives, recovering):
    v = verdict(_differences(**changes))
    assert v["claim_survives"] is survives and v["controls_recovering_hsd_lead"] == recovering
    missing = _differences()
    del missing["hsd − opsd"]
    assert verdict(missing)["claim_survives"] is None  # an arm that did not run decides nothing


@pytest.mark.parametrize(("k1_gain", "final", "shrinks", "above"), [
    (0.20, 0.62, True, True),  # its gain is largest at k = 1, and 0.62 / 0.5 is 24% over the base
    (0.00, 0.62, False, True),  # as large at k = 6 as at k = 1
    (0.20, 0.53, True, False),  # 6% over the base model
])
def test_sdzero_s_criteria_read_its_gain_over_k_and_over_the_base_model(k1_gain, final, shrinks, above):
    runs = []
    for seed in range(4):
        noise = 0.004 * seed
        runs += [_run("grpo", 0, seed, 0.58, 0.30 + noise, k1=0.70),
                 _run("sdzero", 0, seed, final + noise, 0.32 + noise, k1=0.72 + k1_gain + noise)]
    a = analyse(runs, ["grpo", "sdzero"])
    v = a["verdict"]
    assert (v["sdzero_gain_shrinks_with_k"], v["sdzero_above_base"]) == (shrinks, above)
    assert v["sdzero_claim_survives"] == (shrinks and above)
    assert a["sdzero_over_base"]["mean"] == pytest.approx(statistics.fmean(
        (final + 0.004 * s) / 0.5 - 1.1 for s in range(4)))
    assert "SD-Zero's claim survives" in markdown(a, ["grpo", "sdzero"])


def test_paired_text_names_the_interval():
    assert Paired(10, 0.031, 0.01, 0.008, 0.054).text() == "+0.031 ± 0.010 (95% CI +0.008 … +0.054, n = 10)"


def test_every_arm_sweeps_its_own_lr_by_the_same_rule_and_the_grid_pairs_the_arms(tmp_path):
    """The protocol's orchestration with the run itself stubbed by a function of the config
    (the real `hsd run` path is exercised by tests/e2e/test_compare.py)."""
    from services.apps.experiment import Experiment, Protocol

    ran = []
    best = {"grpo": 3e-4, "hsd-placebo": 2e-4, "grpo-kl0.1": 1e-4}  # the best mean of each arm

    def run(c):
        a = c.algorithm
        arm = "hsd-placebo" if a.peer_source == "placebo" else "grpo-kl0.1" if a.kl_coef == 0.1 else "grpo"
        assert a.method == ARMS[arm].method and (arm != "hsd-placebo" or a.teacher == "frozen")
        ran.append((arm, c.learner.lr, c.run.seed, c.model.path))
        assert c.model.max_response_tokens == 160  # every run: the budget an SRT model's stream needs
        # grpo's best mean (3e-4) has a run that ends below its start (0.5): it is out
        collapses = arm == "grpo" and c.learner.lr == 3e-4 and c.model.path == "ws-b" \
            and c.run.seed == p.sweep_seeds[-1]
        final = 0.45 if collapses else 0.9 - abs(c.learner.lr - best[arm]) * 1e3
        return {"eval_accuracy_by_step": {"0": 0.5, "12": final + 0.001 * (c.run.seed % 10)}}

    p = Protocol(warm_starts=("ws-a", "ws-b"), arms=("grpo", "hsd-placebo", "grpo-kl0.1"), seeds=2)
    e = Experiment(make_config, p, tmp_path, run)
    lrs, sweep = e.sweep(srt=[])
    assert lrs == {"grpo": 2e-4, "hsd-placebo": 2e-4, "grpo-kl0.1": 1e-4}
    assert len(sweep) == 3 * 3 * 2 * 2 and {r.seed for r in sweep} == set(p.sweep_seeds)
    assert {(arm, path, lr_) for arm, lr_, _, path in ran} == {
        (arm, w, x) for arm in p.arms for w in ("ws-a", "ws-b") for x in p.lrs}
    del ran[:]
    runs = e.grid(lrs, srt=[])
    assert sorted((r.arm, r.warm_start, r.seed) for r in runs) == \
        sorted((m, w, s) for m in p.arms for w in (0, 1) for s in (0, 1))
    assert all(lr_ == lrs[arm] for arm, lr_, _, _ in ran)


def test_best_lr_prefers_fewer_collapses_over_a_higher_mean():
    def run(lr, start, final):
        return RunResult(name="r", arm="grpo", method="grpo", warm_start=0, seed=0, lr=lr, dir="d", samples_before=0,
                         samples_per_step=1, accuracy_by_step={0: start, 12: final}, accuracy_by_length={},
                         reference_logprob=None, wall_seconds=0.0)

    # every lr collapses somewhere: 1e-4 once, 3e-4 twice with the best mean
    sweep = [run(1e-4, 0.5, 0.49), run(1e-4, 0.5, 0.6), run(3e-4, 0.5, 0.48), run(3e-4, 0.5, 0.45),
             run(3e-4, 0.5, 0.99), run(3e-4, 0.5, 0.99)]
    assert best_lr(sweep, (1e-4, 3e-4)) == 1e-4
    # none collapses: the mean decides
    assert best_lr([run(1e-4, 0.5, 0.6), run(3e-4, 0.5, 0.7)], (1e-4, 3e-4)) == 3e-4


def _eta_run(arm: str, eta: int, seed: int, final: float, sps: float, sha: str | None = None) -> RunResult:
    return RunResult(name=f"{arm}-{eta}-{seed}", arm=arm, method=ARMS[arm].method, warm_start=0, seed=seed,
                     lr=1e-4, dir="", samples_before=0, samples_per_step=128, accuracy_by_step={0: 0.5, 12: final},
                     accuracy_by_length={}, reference_logprob=None, wall_seconds=1.0, max_staleness=eta,
                     samples_per_second=sps, ess_fraction=1.0 - 0.1 * eta, dropped_fraction=0.05 * eta,
                     weights_sha256=sha)


@pytest.mark.parametrize(("async_final", "async_sps", "met"), [
    (0.70, 160.0, True),  # as accurate, 1.6× the samples/s
    (0.60, 160.0, False),  # 0.1 below synchronous: beyond 1 SE
    (0.70, 120.0, False),  # not 1.5× faster
])
def test_staleness_study_reads_each_eta_against_the_synchronous_runs(async_final, async_sps, met):
    from services.apps.staleness_study import analyse_staleness, staleness_markdown

    runs = []
    for seed in range(4):
        runs.append(_eta_run("hsd", 0, seed, 0.70 + 0.01 * seed, 100.0, sha=f"w{seed}"))
        for eta in (1, 2):
            runs.append(_eta_run("hsd", eta, seed, async_final + 0.01 * seed + 0.002 * (seed % 2), async_sps))
    repeats = [_eta_run("hsd", 0, 0, 0.70, 100.0, sha="w0"), _eta_run("hsd", 0, 1, 0.69, 100.0, sha="other")]
    a = analyse_staleness(runs, repeats, ["hsd"], (0, 1, 2))
    assert a["pairs"] == 4 and a["goal_met"] is met
    row = a["table"]["hsd"]["2"]
    assert row["speedup"] == pytest.approx(async_sps / 100.0)
    assert row["final_minus_sync"]["mean"] == pytest.approx(async_final - 0.70 + 0.001)
    assert (row["ess_fraction"], row["dropped_fraction"]) == pytest.approx((0.8, 0.1))
    assert [r["bit_identical"] for r in a["repeats"]] == [True, False]
    assert "bit for bit: False" in staleness_markdown(a)


def test_the_staleness_study_reuses_the_grid_s_runs_at_their_eta_and_repeats_eta_0(tmp_path):
    from services.apps.experiment import Experiment, Protocol

    ran = []

    def run(c):
        ran.append((c.algorithm.method, c.learner.max_staleness, c.run.seed, c.run.name))
        return {"eval_accuracy_by_step": {"0": 0.5, "12": 0.6}}

    p = Protocol(warm_starts=("ws-a",), arms=("grpo", "hsd", "opsd"), seeds=2, staleness=(0, 1, 4), repeats=1)
    e = Experiment(make_config, p, tmp_path, run)
    grid = e.grid(dict.fromkeys(p.arms, 1e-4), srt=[])
    eta = grid[0].max_staleness  # the config's η
    assert eta == 1
    del ran[:]
    study, repeats = e.staleness_study(dict.fromkeys(p.arms, 1e-4), grid, srt=[])
    # η = 1 comes from the grid; 0 and 4 are run for grpo and hsd (opsd is not in the study)
    assert sorted((m, s, seed) for m, s, seed, _ in ran[:-2]) == sorted(
        (m, s, seed) for m in ("grpo", "hsd") for s in (0, 4) for seed in (0, 1))
    assert {(r.arm, r.max_staleness) for r in study} == {(a, s) for a in ("grpo", "hsd") for s in (0, 1, 4)}
    assert len(study) == 12 and [(r.arm, r.max_staleness, r.seed) for r in repeats] == [("grpo", 0, 0), ("hsd", 0, 0)]
    assert all(name.endswith("-repeat") for *_, name in ran[-2:])


def test_an_interrupted_comparison_goes_on_where_it_stopped(tmp_path):
    """A run that finished with the same config is read back, not run again; one left
    unfinished, or run with another config, is run afresh in a clean dir."""
    from core.config import to_toml
    from services.apps.experiment import Experiment, Protocol

    ran = []

    def run(c):  # what the launcher leaves in a run dir
        run_dir = Path(c.run.dir)
        assert not run_dir.exists(), "a run starts in a clean dir"
        run_dir.mkdir(parents=True)
        (run_dir / "config.toml").write_text(to_toml(c, mask_secrets=False))
        ran.append(c.run.name)
        summary = {"eval_accuracy_by_step": {"0": 0.5, str(c.run.steps): 0.6 + 0.01 * len(ran)}}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return summary

    p = Protocol(warm_starts=("ws-a",), arms=("grpo", "hsd"), seeds=2, staleness=())
    first = Experiment(make_config, p, tmp_path, run).grid({"grpo": 1e-4, "hsd": 1e-4}, srt=[])
    assert len(ran) == 4
    # interrupted during this run: no summary, and so not in the ledger
    (tmp_path / "hsd-ws0-seed1" / "summary.json").unlink()
    ledger = (tmp_path / "runs.jsonl").read_text().splitlines()
    (tmp_path / "runs.jsonl").write_text("".join(f"{line}\n" for line in ledger if "hsd-ws0-seed1" not in line))
    again = Experiment(make_config, p, tmp_path, run).grid({"grpo": 1e-4, "hsd": 1e-4}, srt=[])
    assert ran[4:] == ["hsd-ws0-seed1"]
    assert [r.final for r in again[:3]] == [r.final for r in first[:3]] and again[3].final != first[3].final
    Experiment(make_config, p, tmp_path, run).grid({"grpo": 2e-4, "hsd": 1e-4}, srt=[])  # grpo's lr changed
    assert ran[5:] == ["grpo-ws0-seed0", "grpo-ws0-seed1"]
    Experiment(make_config, replace(p, steps=13), tmp_path, run).grid({"grpo": 2e-4, "hsd": 1e-4}, srt=[])
    assert len(ran) == 11  # steps are outside the config hash, but a run of other length is another run


def test_a_comparison_goes_on_from_its_ledger_alone_and_reruns_sdzero_from_other_srt_weights(tmp_path):
    """runs.jsonl is all a new output dir needs to go on; an SRT run is reused only where
    its checkpoints are there, and sdzero's runs are keyed by the SRT weights' digest."""
    import shutil

    from services.apps.experiment import LEDGER, Experiment, Protocol

    ran = []

    def run(c):
        ran.append(c.run.name)
        return {"eval_accuracy_by_step": {"0": 0.5, str(c.run.steps): 0.6 + 0.01 * len(ran)}}

    p = Protocol(warm_starts=("ws-a",), arms=("grpo", "hsd"), seeds=2, staleness=())
    first = Experiment(make_config, p, tmp_path / "a", run).grid({"grpo": 1e-4, "hsd": 1e-4}, srt=[])
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / LEDGER, tmp_path / "b" / LEDGER)
    again = Experiment(make_config, p, tmp_path / "b", run).grid({"grpo": 1e-4, "hsd": 1e-4}, srt=[])
    assert len(ran) == 4 and again == first  # read back from the ledger: nothing ran
    lines = (tmp_path / "b" / LEDGER).read_text().splitlines()
    (tmp_path / "b" / LEDGER).write_text("\n".join([*lines[:-1], lines[-1][:40]]))  # a write cut short
    Experiment(make_config, p, tmp_path / "b", run).grid({"grpo": 1e-4, "hsd": 1e-4}, srt=[])
    assert ran[4:] == ["hsd-ws0-seed1"]  # only the run whose record was cut runs again
    assert Experiment(make_config, p, tmp_path / "b", run).ledger.keys() == {r.name for r in first}
    del ran[4:]

    for sha, runs in (("w1", 1), ("w1", 1), ("w2", 2)):
        Experiment(make_config, p, tmp_path / "b", run)._one(
            "sdzero-ws0-seed0", ARMS["sdzero"], 0, 0, 1e-4, 12, model=str(tmp_path / "b" / "srt"), model_sha256=sha)
        assert ran[4:].count("sdzero-ws0-seed0") == runs


def test_the_srt_phase_is_reused_with_its_settings_and_equal_samples_lengthen_the_other_arms(tmp_path):
    """SD-Zero's phase 1 runs once per warm start (seeded by its index) and again only when
    a setting changes; with equal_samples every arm not starting from its model runs as
    many more steps as the phase's samples fill, and sdzero counts them before its own."""
    from services.apps.experiment import Experiment, Protocol

    phases, ran = [], []

    def srt_phase(model_in, out, task, **settings):
        phases.append((model_in, settings["seed"], settings["target"]))
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "model.safetensors").write_text(f"{model_in} {settings}")
        report = {"model_in": model_in, "task": task, **settings,
                  "collected": {"attempts": 150, "revisions_sampled": 60, "samples": 210}}
        (Path(out) / "srt.json").write_text(json.dumps(report))
        return report

    def run(c):
        ran.append((c.run.name, c.run.steps, c.model.path))
        return {"eval_accuracy_by_step": {"0": 0.5, str(c.run.steps): 0.6}}

    p = Protocol(warm_starts=("ws-a", "ws-b"), arms=("grpo", "sdzero"), seeds=1, staleness=(), equal_samples=True)
    srt = Experiment(make_config, p, tmp_path, run, srt_phase).srt()
    assert phases == [("ws-a", 0, 1000), ("ws-b", 1, 1000)] and srt[1].total_samples == 210
    assert Experiment(make_config, p, tmp_path, run, srt_phase).srt() == srt and len(phases) == 2  # reused
    Experiment(make_config, replace(p, srt_target=500), tmp_path, run, srt_phase).srt()
    assert phases[2:] == [("ws-a", 0, 500), ("ws-b", 1, 500)]
    srt = Experiment(make_config, p, tmp_path, run, srt_phase).srt()
    runs = {r.name: r for r in Experiment(make_config, p, tmp_path, run, srt_phase).grid(
        {"grpo": 1e-4, "sdzero": 1e-4}, srt)}
    steps = {name: (n, model) for name, n, model in ran}
    per_step = make_config([]).learner.batch_groups * make_config([]).actor.group_size
    assert steps["grpo-ws1-seed0"] == (12 + -(-210 // per_step), "ws-b")  # the steps 210 samples fill
    assert steps["sdzero-ws1-seed0"] == (12, srt[1].dir) and runs["sdzero-ws1-seed0"].samples_before == 210


def test_an_arm_best_at_the_largest_lr_sweeps_on_until_its_optimum_is_inside(tmp_path):
    from services.apps.experiment import Experiment, Protocol

    optimum = {"grpo": 4e-4, "grpo-kl0.1": 9e-4, "hsd-placebo": 2e-4}

    def run(c):
        arm = "hsd-placebo" if c.algorithm.peer_source == "placebo" else "grpo-kl0.1" if c.algorithm.kl_coef else "grpo"
        return {"eval_accuracy_by_step": {"0": 0.5, "12": 0.9 - abs(c.learner.lr - optimum[arm]) * 1e2}}

    p = Protocol(warm_starts=("ws-a",), arms=("grpo", "grpo-kl0.1", "hsd-placebo"), seeds=1, lr_extensions=2)
    lrs, sweep = Experiment(make_config, p, tmp_path, run).sweep(srt=[])
    swept = {arm: sorted({r.lr for r in sweep if r.arm == arm}) for arm in p.arms}
    # grpo: best at 3e-4, then at 4e-4, and 5e-4 is worse: bracketed at 4e-4
    assert swept["grpo"] == [1e-4, 2e-4, 3e-4, 4e-4, 5e-4] and lrs["grpo"] == 4e-4
    # grpo-kl0.1's optimum lies beyond the two extensions: it stops at the limit
    assert swept["grpo-kl0.1"] == [1e-4, 2e-4, 3e-4, 4e-4, 5e-4] and lrs["grpo-kl0.1"] == 5e-4
    assert swept["hsd-placebo"] == [1e-4, 2e-4, 3e-4] and lrs["hsd-placebo"] == 2e-4  # inside: no extension


def test_a_ledger_is_keyed_by_the_start_model_s_weights_not_its_path(tmp_path):
    """The same warm start in another checkout (another path, another machine) reuses the
    ledger; other weights at the same path do not."""
    import shutil

    from services.apps.experiment import LEDGER, Experiment, Protocol

    ran = []

    def run(c):
        ran.append(c.run.name)
        return {"eval_accuracy_by_step": {"0": 0.5, str(c.run.steps): 0.7}}

    here, there = tmp_path / "checkout-a" / "tiny", tmp_path / "checkout-b" / "tiny"
    here.mkdir(parents=True)
    (here / "model.safetensors").write_bytes(b"weights of the warm start")
    shutil.copytree(here, there)

    def grid(model, out):
        p = Protocol(warm_starts=(str(model),), arms=("grpo",), seeds=1, staleness=())
        Experiment(make_config, p, out, run).grid({"grpo": 1e-4}, srt=[])

    grid(here, tmp_path / "a")
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / LEDGER, tmp_path / "b" / LEDGER)
    grid(there, tmp_path / "b")
    assert ran == ["grpo-ws0-seed0"]  # the copy's weights are the same: read back, not run
    (there / "model.safetensors").write_bytes(b"other weights")
    grid(there, tmp_path / "b")
    assert ran == ["grpo-ws0-seed0"] * 2
