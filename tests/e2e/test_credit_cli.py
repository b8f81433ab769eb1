"""`hsd credit` as a user runs it: δ_t recomputable from the printed ids."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM


def _hsd_credit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.apps.cli", "credit", *args], capture_output=True,
                          text=True, timeout=120)


def _logprobs(model, ids: list[int], n: int) -> torch.Tensor:
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    start = len(ids) - n
    return torch.stack([logp[start + t - 1, ids[start + t]] for t in range(n)])


@pytest.mark.parametrize("teacher", [["--peer", "3*4=12, 7+12=19. #### 19"], ["--answer", "19"],
                                     ["--reward", "0"]])
def test_json_credit_is_recomputable_from_the_ids(tiny_model_dir, teacher, tmp_path):
    png = tmp_path / "credit.png"
    out = _hsd_credit("--model", str(tiny_model_dir), "--prompt", "Compute 7+3*4.",
                      "--response", "7+3=10, 10*4=40. #### 40", *teacher, "--json", "--png", str(png))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    n = len(result["tokens"])
    assert n == len(result["delta"]) == len("7+3=10, 10*4=40. #### 40")
    assert result["student_ids"][-n:] == result["teacher_ids"][-n:]  # y is the suffix of both
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    delta = _logprobs(model, result["teacher_ids"], n) - _logprobs(model, result["student_ids"], n)
    torch.testing.assert_close(delta, torch.tensor(result["delta"]), atol=1e-4, rtol=1e-4)
    assert (result["divergence"] == 0) == (teacher[0] == "--peer")
    assert png.stat().st_size > 1000


def test_text_output_and_usage_errors(tiny_model_dir):
    out = _hsd_credit("--model", str(tiny_model_dir), "--prompt", "p", "--response", "abc", "--answer", "x")
    assert out.returncode == 0 and "method opsd: 3 tokens" in out.stdout
    # a pipe gets plain text: each token with its δ, no ANSI colours
    assert "\033[" not in out.stdout and out.stdout.startswith("a[") and " b[" in out.stdout
    missing = _hsd_credit("--model", str(tiny_model_dir), "--prompt", "p", "--response", "abc")
    assert missing.returncode == 2 and "--peer, --answer or --reward" in missing.stderr
    wrong = _hsd_credit("--model", str(tiny_model_dir), "--prompt", "p", "--response", "abc", "--answer", "x",
                        "--method", "hsd")
    assert wrong.returncode == 2 and "needs --peer" in wrong.stderr
