"""The comparison's statistics and analysis against independent computations: Student's t
quantiles from published tables, paired differences by numpy, the pre-stated verdict."""

from __future__ import annotations

import statistics
from dataclasses import replace

import numpy as np
import pytest

from services.apps.experiment import (
    Paired,
    RunResult,
    analyse,
    best_lr,
    markdown,
    paired,
    t_quantile,
    verdict,
)


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


def _run(method: str, ws: int, seed: int, final: float, k6: float, k1: float = 0.9) -> RunResult:
    return RunResult(name=f"{method}-{ws}-{seed}", method=method, warm_start=ws, seed=seed, lr=1e-4, dir="",
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
    a = analyse(runs, ["grpo", "opsd", "hsd"])
    assert a["pairs"] == 6
    diff = a["differences"]["hsd − grpo"]["final"]
    assert diff["mean"] == pytest.approx(0.031) and diff["n"] == 6
    assert diff["se"] == pytest.approx(np.std([0.03 + 0.001 * s for s in range(3)] * 2, ddof=1) / np.sqrt(6))
    assert a["differences"]["hsd − opsd"]["k=6"]["mean"] == pytest.approx(0.04)
    assert a["table"]["grpo"]["final"][0] == pytest.approx(np.mean([0.6 + 0.1 * w + 0.01 * s
                                                                     for w in range(2) for s in range(3)]))
    assert a["verdict"]["hsd_opsd_gap_grows_with_k"] is True  # 0.04 at k = 6, 0 at k = 1
    text = markdown(a, ["grpo", "opsd", "hsd"])
    hsd = np.array([r.final for r in runs[:-1] if r.method == "hsd"])
    assert f"| hsd | {hsd.mean():.3f} ± {hsd.std(ddof=1) / np.sqrt(6):.3f} |" in text
    assert "hsd − grpo: held-out (all k): +0.031 ± 0.000" in text


def _d(mean: float, se: float) -> dict:
    return {"n": 10, "mean": mean, "se": se, "low": mean - 2 * se, "high": mean + 2 * se}


@pytest.mark.parametrize(("k4", "k6", "gap1", "gap6", "survives"), [
    ((0.05, 0.01), (0.06, 0.02), 0.0, 0.04, True),
    ((0.05, 0.03), (0.06, 0.02), 0.0, 0.04, False),  # k = 4 within 2 SE
    ((0.05, 0.01), (0.06, 0.02), 0.05, 0.04, False),  # the gap does not grow with k
])
def test_verdict_applies_the_stated_falsification(k4, k6, gap1, gap6, survives):
    differences = {"hsd − grpo": {"k=4": _d(*k4), "k=6": _d(*k6)},
                   "hsd − opsd": {"k=1": _d(gap1, 0.01), "k=6": _d(gap6, 0.01)}}
    assert verdict(differences)["claim_survives"] is survives


def test_paired_text_names_the_interval():
    assert Paired(10, 0.031, 0.01, 0.008, 0.054).text() == "+0.031 ± 0.010 (95% CI +0.008 … +0.054, n = 10)"


def test_the_sweep_picks_grpo_s_best_mean_lr_and_the_grid_pairs_every_method(tmp_path):
    """The protocol's orchestration with the run itself stubbed by a function of the config
    (the real `hsd run` path is exercised by tests/e2e/test_compare.py)."""
    from core.config import load_config
    from methods import configure
    from services.apps.experiment import Experiment, Protocol

    def make_config(overrides):
        c = load_config(environ={}, overrides=overrides)
        configure(c)
        return c

    ran = []

    def run(c):
        ran.append((c.algorithm.method, c.learner.lr, c.run.seed, c.model.path))
        assert c.model.max_response_tokens == 160  # every run: the budget an SRT model's stream needs
        # 3e-4 has the best mean but one of its runs ends below its start (0.5): it is out
        collapses = c.learner.lr == 3e-4 and c.model.path == "ws-b" and c.run.seed == p.sweep_seeds[-1]
        final = 0.45 if collapses else {1e-4: 0.6, 2e-4: 0.7, 3e-4: 0.9}[c.learner.lr]
        return {"eval_accuracy_by_step": {"0": 0.5, "12": final + 0.001 * (c.run.seed % 10)}}

    p = Protocol(warm_starts=("ws-a", "ws-b"), methods=("grpo", "hsd"), seeds=2)
    e = Experiment(make_config, p, tmp_path, run)
    lr, sweep = e.sweep()
    assert statistics.fmean(r.final for r in sweep if r.lr == 3e-4) > statistics.fmean(
        r.final for r in sweep if r.lr == 2e-4)
    assert lr == 2e-4 and len(sweep) == 12 and {r.seed for r in sweep} == set(p.sweep_seeds)
    assert {(path, lr_) for m, lr_, _, path in ran} == {(w, x) for w in ("ws-a", "ws-b") for x in p.lrs}
    assert all(m == "grpo" for m, _, _, _ in ran)
    (srt,) = [Experiment(make_config, replace(p, warm_starts=("ws-a",)), tmp_path, run).srt()]
    assert [(r.method, r.lr) for r in srt] == [("srt", p.srt_lr)]
    del ran[12:]
    runs = e.grid(lr, srt=[])
    assert sorted((r.method, r.warm_start, r.seed) for r in runs) == \
        sorted((m, w, s) for m in ("grpo", "hsd") for w in (0, 1) for s in (0, 1))
    assert {(m, path) for m, lr_, _, path in ran[12:]} == {(m, w) for m in ("grpo", "hsd") for w in ("ws-a", "ws-b")}
    assert all(lr_ == 2e-4 for _, lr_, _, _ in ran[12:])


def test_best_lr_prefers_fewer_collapses_over_a_higher_mean():
    def run(lr, start, final):
        return RunResult(name="r", method="grpo", warm_start=0, seed=0, lr=lr, dir="d", samples_before=0,
                         samples_per_step=1, accuracy_by_step={0: start, 12: final}, accuracy_by_length={},
                         reference_logprob=None, wall_seconds=0.0)

    # every lr collapses somewhere: 1e-4 once, 3e-4 twice with the best mean
    sweep = [run(1e-4, 0.5, 0.49), run(1e-4, 0.5, 0.6), run(3e-4, 0.5, 0.48), run(3e-4, 0.5, 0.45),
             run(3e-4, 0.5, 0.99), run(3e-4, 0.5, 0.99)]
    assert best_lr(sweep, (1e-4, 3e-4)) == 1e-4
    # none collapses: the mean decides
    assert best_lr([run(1e-4, 0.5, 0.6), run(3e-4, 0.5, 0.7)], (1e-4, 3e-4)) == 3e-4
