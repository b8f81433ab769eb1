"""`make bench` runs every suite and writes a well-formed results file: checked in smoke
mode (each measurement once, at its smallest size), which runs the same code as the quick
and full modes in a fraction of their time. The figures themselves are not checked: speed
is measured by the bench, not by tests."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from bench.run import SUITES

PREFIX = {"transport": "transport_", "weights": "weights_", "actor_engine": "actor_hf_",
          "learner": "learner_", "pipeline": "pipeline_eta"}


@pytest.mark.slow
def test_smoke_bench_writes_a_figure_per_suite(tmp_path, tiny_model_dir):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--output", str(out),
                           "--model", str(tiny_model_dir)], capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert "_machine" in results
    figures = {k: v for k, v in results.items() if not k.startswith("_")}
    assert set(PREFIX) == set(SUITES)
    for suite, prefix in PREFIX.items():
        assert any(name.startswith(prefix) for name in figures), f"no figure from the {suite} suite"
    for name, f in figures.items():
        assert {"value", "baseline", "ratio", "goal", "unit"} <= set(f), name
        op, bound = f["goal"].split()
        assert op in (">=", "<=") and float(bound) > 0, name
        assert f["baseline"] > 0 and math.isclose(f["ratio"], f["value"] / f["baseline"], rel_tol=1e-3), name
    for name in figures:  # the printed table names every figure
        assert name in proc.stdout


def test_the_gpu_suite_says_it_is_skipped_without_cuda(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is here: the suite runs (make bench ARGS='--only learner_gpu')")
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--only", "learner_gpu", "--output", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "learner_gpu: skipped: no CUDA device here" in proc.stderr
    assert [k for k in json.loads(out.read_text()) if not k.startswith("_")] == []


def test_smoke_figures_stay_out_of_the_results_file_unless_one_is_named():
    from bench.common import RESULTS

    before = RESULTS.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--only", "transport"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "transport_groups_per_s" in proc.stdout
    assert "these figures show that the suites run, not how fast" in proc.stderr
    assert RESULTS.read_bytes() == before
    both = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--full"], capture_output=True, text=True,
                          timeout=60)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
