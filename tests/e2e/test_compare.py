"""`hsd compare --quick`: the whole protocol as a user runs it, at its smallest size — SD-Zero's
phase 1 (collection, stage 1, stage 2), then sdzero from its model with the reference's phase-2 settings, GRPO,
GRPO + KL to θ0 and HSD with a placebo peer paired with it over two seeds, the mechanism
measurement, the analysis and its files."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from services.apps.experiment import OFFSETS


@pytest.mark.slow
def test_quick_compare_runs_srt_then_the_arms_paired_with_grpo(tmp_path):
    out = tmp_path / "compare"
    done = subprocess.run([sys.executable, "-m", "services.apps.cli", "compare", "--quick", "--out", str(out),
                           "--set", "learner.batch_groups=2", "--set", "actor.group_size=4"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the claim is falsified if" in done.stdout and "verdict:" in done.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["seeds"] == 2 and results["sweep"] == []  # one lr: nothing to sweep
    arms = ["grpo", "grpo-kl0.1", "hsd-placebo", "sdzero"]
    assert list(results["lrs"]) == arms
    # 32 held-out problems: the chain's test split repeats its few k = 1 problems
    coverage = results["held_out"]
    assert sum(c["problems"] for c in coverage.values()) == 32
    assert all(1 <= c["distinct"] <= c["problems"] for c in coverage.values())

    (srt,) = results["srt"]  # SD-Zero's phase 1: 8 verified revisions, stage 2 4 of them, stage 1 the rest
    assert srt["report"]["stage2"]["examples"] == 4 and srt["report"]["stage1"]["examples"] == 4
    assert srt["samples"]["attempts"] == srt["report"]["collected"]["attempts"] > 0
    srt_model = Path(srt["dir"])
    assert (srt_model / "model.safetensors").exists()
    g4 = {g["name"]: g for g in results["srt_gates"][0]["gates"]}["G4 reviser > fresh"]
    assert g4["value"] is not None  # measured on the SRT model's own failed attempts

    runs = results["runs"]
    assert sorted((r["arm"], r["seed"]) for r in runs) == [(a, s) for a in sorted(arms) for s in (0, 1)]
    for r in runs:
        written = tomllib.loads(Path(r["dir"], "config.toml").read_text())
        assert written["algorithm"]["method"] == r["method"] and written["run"]["seed"] == r["seed"]
        assert (written["algorithm"]["kl_coef"] == 0.1) == (r["arm"] == "grpo-kl0.1")
        assert (written["algorithm"]["peer_source"] == "placebo") == (r["arm"] == "hsd-placebo")
        assert set(r["accuracy_by_step"]) == {"0", "1"}
        if r["method"] == "sdzero":
            # phase 2 as the reference runs it: from the SRT model, which is also the frozen
            # teacher; top-64 mixed KL, no outcome advantage; the SRT phase's samples counted
            assert written["model"]["path"] == str(srt_model)
            a = written["algorithm"]
            assert (a["loss"], a["topk"], a["topk_alpha"], a["advantage"], a["teacher"]) == \
                ("topk", 64, 0.5, "none", "frozen")
            assert r["samples_before"] == srt["samples"]["attempts"] + srt["samples"]["revisions"] > 8
            assert r["samples_before"] == srt["report"]["collected"]["samples"]
        else:
            assert r["samples_before"] == 0

    analysis = results["analysis"]
    assert analysis["pairs"] == 2 and analysis["differences"]["sdzero − grpo"]["final"]["n"] == 2
    finals = {(r["arm"], r["seed"]): r["accuracy_by_step"]["1"] for r in runs}
    assert analysis["differences"]["sdzero − grpo"]["final"]["mean"] == pytest.approx(
        sum(finals["sdzero", s] - finals["grpo", s] for s in (0, 1)) / 2)
    for a in results["credit_alignment"]["0"]:
        assert a["k"] in (1, 6) and len(a["hsd"]) == len(a["opsd"]) == len(OFFSETS)
    assert set(analysis["differences"]) >= {f"{a} − grpo" for a in arms[1:]}
    for r in runs:  # what asynchrony did, read from each run's own files
        assert r["samples_per_second"] > 0 and 0 < r["ess_fraction"] <= 1 and len(r["weights_sha256"]) == 64
        assert r["max_staleness"] == 1 and set(r["seconds_by_step"]) == {"0", "1"}

    # the synchronous-vs-asynchronous study (grpo only: hsd is not in the quick arms): η = 1
    # from the grid, η = 0 run on both seeds, then one pair at η = 0 again
    staleness = results["staleness"]
    assert sorted((r["max_staleness"], r["seed"]) for r in staleness["runs"]) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for r in staleness["runs"] + staleness["repeats"]:
        written = tomllib.loads(Path(r["dir"], "config.toml").read_text())
        assert written["learner"]["max_staleness"] == r["max_staleness"]
    table = staleness["analysis"]["table"]["grpo"]
    assert table["1"]["final_minus_sync"]["n"] == 2 and table["1"]["speedup"] > 0
    (repeat,) = staleness["analysis"]["repeats"]
    # a synchronous run repeats bit for bit: seeded groups at the learner's own version,
    # trained in an order their arrival does not set
    assert repeat["seed"] == 0 and repeat["bit_identical"] is True, repeat
    assert repeat["final"] == repeat["repeat_final"]
    assert all((out / f).stat().st_size > 0 for f in ("table.md", "accuracy.png", "forest.png", "staleness.png",
                                                       "credit_alignment.png"))
