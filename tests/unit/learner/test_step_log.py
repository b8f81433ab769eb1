"""metrics.jsonl: what the learner appends, read back as it grows (a half-written last
line waits for the next read)."""

from __future__ import annotations

import io

from learner.step_log import FILE, StepLog, StepLogTail, read
from services.apps.progress import RunProgress


def test_records_read_back_incrementally_and_a_half_line_waits(tmp_path):
    log = StepLog(tmp_path, total_steps=3)
    log.evaluation(0, 0.5, {1: 0.75, 6: 0.25}, -0.3)
    log.step(1, 1, {"reward_mean": 0.4, "loss": 0.1, "grad_norm": 2.0}, seconds=2.0, samples=8, tokens=100,
             staleness=0.5)
    records, offset = read(tmp_path / FILE)
    assert [r["kind"] for r in records] == ["eval", "step"]
    assert records[0]["accuracy_by_length"] == {"1": 0.75, "6": 0.25}
    assert records[1]["tokens_per_second"] == 50 and records[1]["grad_norm"] == 2.0
    with (tmp_path / FILE).open("a") as f:
        f.write('{"kind": "step", "st')  # the learner is mid-write
    assert read(tmp_path / FILE, offset) == ([], offset)
    with (tmp_path / FILE).open("a") as f:
        f.write('ep": 2}\n')
    assert read(tmp_path / FILE, offset)[0] == [{"kind": "step", "step": 2}]


def test_a_tail_keeps_the_newest_steps_and_counts_every_sample(tmp_path):
    log, tail = StepLog(tmp_path, total_steps=5), StepLogTail(tmp_path, keep=2)
    assert tail.poll() == 0 and tail.step == 0 and tail.held_out is None
    for step in range(1, 6):
        log.step(step, step, {"reward_mean": step / 10, "loss": 0.0}, seconds=1.0, samples=step, tokens=10,
                 staleness=0.0)
        if step == 3:
            log.evaluation(step, 0.7, {}, None)
    assert tail.poll() == 6
    assert [r["step"] for r in tail.recent] == [4, 5] and tail.step == 5
    assert tail.samples == 1 + 2 + 3 + 4 + 5 and tail.held_out["accuracy"] == 0.7
    assert tail.poll() == 0 and tail.samples == 15  # nothing read twice


def test_progress_off_a_terminal_prints_plain_lines(tmp_path):
    out = io.StringIO()
    progress = RunProgress(tmp_path, total=2, stream=out, every_s=3600)
    log = StepLog(tmp_path, total_steps=2)
    log.evaluation(0, 0.5, {}, None)
    log.step(1, 1, {"reward_mean": 0.25, "loss": 0.0}, seconds=1.0, samples=8, tokens=10, staleness=0.0)
    progress.update()
    log.step(2, 2, {"reward_mean": 0.75, "loss": 0.0}, seconds=1.0, samples=8, tokens=10, staleness=0.0)
    progress.update()  # the last step is always shown
    progress.update(final=True)  # nothing new since: no repeat
    log.evaluation(2, 0.9, {}, None)
    progress.close()  # the run's last state, read after the last step
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in out.getvalue()
    assert lines[0].startswith("step 1/2 | ") and "reward 0.250 | held-out 0.500 (step 0)" in lines[0]
    assert lines[1].startswith("step 2/2 | ") and "reward 0.750 | held-out 0.500" in lines[1]
    assert lines[2].startswith("step 2/2 | ") and "held-out 0.900 (step 2)" in lines[2]


def test_hsd_plot_draws_a_run_from_its_dir_alone(tmp_path, capsys):
    from services.apps.cli import EXIT_USAGE, main

    log = StepLog(tmp_path, total_steps=4)
    for step in range(5):
        if step % 2 == 0:
            log.evaluation(step, 0.5 + 0.05 * step, {1: 0.8, 6: 0.3 + 0.05 * step}, -0.3 + 0.02 * step)
        if step:
            log.step(step, step, {"reward_mean": 0.4, "loss": 0.1, "grad_norm": 1.0, "teacher_kl": 0.2,
                                  "distilled_fraction": 0.5, "rho_mean": 1.0}, seconds=1.0, samples=8,
                     tokens=100, staleness=0.5)
    assert main(["plot", str(tmp_path)]) == 0
    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert main(["plot", str(tmp_path / "nowhere")]) == EXIT_USAGE
    assert "metrics.jsonl does not exist" in capsys.readouterr().err
