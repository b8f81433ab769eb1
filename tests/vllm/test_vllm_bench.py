"""The vllm tier's bench suite runs (smoke mode: each measurement once) and writes its
figure (the figure's value is the bench's business, not the test's)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

pytestmark = pytest.mark.vllm


def test_the_vllm_engine_bench_writes_its_figure(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--only", "actor_engine_vllm",
                           "--output", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figure = json.loads(out.read_text())["actor_vllm_tokens_per_s"]
    assert figure["value"] > 0 and figure["baseline"] > 0 and figure["goal"] == ">= 0.9"
    assert math.isclose(figure["ratio"], figure["value"] / figure["baseline"], rel_tol=1e-3)
    assert "actor_vllm_tokens_per_s" in proc.stdout
