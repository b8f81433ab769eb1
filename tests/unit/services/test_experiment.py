"""The comparison's aggregation: accuracy table over seeds and credit aligned at divergence."""

from __future__ import annotations

import json

import pytest

from services.apps.experiment import OFFSETS, credit_alignment, markdown, table


def test_table_gives_mean_and_population_std_per_budget():
    runs = [{"method": "hsd", "seed": s, "accuracy_by_samples": {0: 0.2, 1280: a}} for s, a in enumerate([0.3, 0.5])]
    runs.append({"method": "grpo", "seed": 0, "accuracy_by_samples": {0: 0.2, 1280: 0.25}})
    t = table(runs, ["grpo", "hsd"])
    assert t["hsd"][1280] == pytest.approx((0.4, 0.1)) and t["hsd"][0] == pytest.approx((0.2, 0.0))
    assert t["grpo"][1280] == pytest.approx((0.25, 0.0))
    text = markdown(t, ["grpo", "hsd"])
    assert "| hsd | 0.200 ± 0.000 | 0.400 ± 0.100 |" in text and "1280 samples" in text


def test_credit_alignment_averages_failed_samples_around_their_divergence(tmp_path):
    lines = [
        {"reward": 0.0, "divergence": 3, "delta": [0.1, 0.1, 0.1, -2.0, 0.5]},  # failed: counted
        {"reward": 0.0, "divergence": 1, "delta": [0.3, -1.0, 0.2]},  # failed: counted
        {"reward": 1.0, "divergence": 2, "delta": [9.0, 9.0, 9.0]},  # succeeded: not counted
        {"reward": 0.0, "divergence": None, "delta": [9.0]},  # no peer: not counted
    ]
    (tmp_path / "credit.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (tmp_path / "grpo").mkdir()
    (tmp_path / "grpo" / "credit.jsonl").write_text("")  # no teacher: nothing is logged
    result = credit_alignment([{"method": "hsd", "dir": str(tmp_path)}, {"method": "grpo", "dir": str(tmp_path / "grpo")},
                               {"method": "grpo", "dir": str(tmp_path / "none")}])
    assert set(result) == {"hsd"}  # grpo's log is empty or absent
    a = dict(zip(result["hsd"]["offsets"], result["hsd"]["abs_delta"], strict=True))
    assert result["hsd"]["samples"] == 2 and result["hsd"]["offsets"] == list(OFFSETS)
    assert a[0] == pytest.approx(1.5) and a[-1] == pytest.approx(0.2) and a[1] == pytest.approx(0.35)
    assert a[-3] == pytest.approx(0.1) and a[-4] is None and a[2] is None
