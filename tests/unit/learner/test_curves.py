"""The learner's curves in TensorBoard and W&B (offline), read back by each tool's own
reader; the step log's numbers are the ones they hold."""

from __future__ import annotations

import importlib.util
import json
import struct

import pytest

from core.config import load_config
from learner.curves import (
    TENSORBOARD_DIR,
    TensorBoardSink,
    WandbSink,
    check_available,
    step_scalars,
    wandb_run_id,
)
from learner.step_log import StepLog
from services.errors import StartupError

STEPS = [{"reward_mean": 0.25, "loss": 0.5, "grad_norm": 1.5}, {"reward_mean": 0.5, "loss": -0.125, "grad_norm": 2.0}]


def _write(log: StepLog) -> None:
    log.evaluation(0, 0.5, {1: 0.75, 6: 0.25}, -0.3)
    for step, metrics in enumerate(STEPS, start=1):
        log.step(step, step, metrics, seconds=2.0, samples=8, tokens=100, staleness=1.0)
    log.evaluation(2, 0.625, {1: 0.875, 6: 0.375}, None)
    log.close()


def test_tensorboard_event_files_hold_every_step_and_evaluation(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _write(StepLog(tmp_path, 2, [TensorBoardSink(tmp_path / TENSORBOARD_DIR)]))
    board = EventAccumulator(str(tmp_path / TENSORBOARD_DIR))
    board.Reload()
    assert [(e.step, e.value) for e in board.Scalars("train/loss")] == [(1, 0.5), (2, -0.125)]
    assert [e.value for e in board.Scalars("train/tokens_per_second")] == [50.0, 50.0]
    assert [(e.step, e.value) for e in board.Scalars("eval/accuracy_k6")] == [(0, 0.25), (2, 0.375)]
    assert [e.step for e in board.Scalars("eval/reference_logprob")] == [0]  # none measured at step 2
    assert not {"train/step", "train/version", "train/time", "train/kind"} & set(board.Tags()["scalars"])
    # the jsonl file is written as before
    assert [json.loads(line)["kind"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == \
        ["eval", "step", "step", "eval"]


def test_step_scalars_are_the_record_s_numbers_only():
    record = {"kind": "step", "step": 3, "version": 3, "time": 1e9, "loss": 0.5, "samples": 8, "flag": True, "x": "y"}
    assert step_scalars(record) == {"train/loss": 0.5, "train/samples": 8.0}


def wandb_records(path):
    """The records of a W&B transaction log: its 7-byte file header, then LevelDB log
    framing (32 KiB blocks; per fragment crc32 4, length 2, type 1: full 1, first 2,
    middle 3, last 4), each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data, pos, fragment, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == kind == 0:
            break
        fragment += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(fragment)
            records.append(record)
            fragment = b""
    return records


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed")
def test_wandb_offline_run_holds_the_curves_and_a_masked_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    c = load_config(environ={}, overrides=[f'run.dir="{tmp_path}"', 'metrics.wandb_project="hsd-test"',
                                           'metrics.wandb_mode="offline"',
                                           'redis.url="redis://:hunter2@localhost:6379/0"'])
    _write(StepLog(tmp_path, 2, [WandbSink(c, tmp_path)]))
    (run,) = (tmp_path / "wandb").glob(f"offline-run-*-{wandb_run_id(tmp_path)}")
    records = wandb_records(run / f"run-{wandb_run_id(tmp_path)}.wandb")
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in records if r.WhichOneof("record_type") == "history"]
    assert [(h["_step"], h.get("train/reward_mean"), h.get("eval/accuracy")) for h in history] == \
        [(0, None, 0.5), (1, 0.25, None), (2, 0.5, 0.625)]  # step 2's metrics and evaluation in one row
    (config,) = [{i.key: json.loads(i.value_json) for i in r.run.config.update} for r in records if r.WhichOneof("record_type") == "run"]
    assert config["metrics"]["wandb_project"] == "hsd-test"
    assert config["redis"]["url"] == "redis://:***@localhost:6379/0"
    assert b"hunter2" not in (run / f"run-{wandb_run_id(tmp_path)}.wandb").read_bytes()


def test_a_wandb_project_without_the_package_fails_at_start_naming_the_field(monkeypatch):
    real = importlib.util.find_spec
    # the one condition a test machine with wandb cannot reach: the package missing
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    c = load_config(environ={}, overrides=['metrics.wandb_project="p"'])
    with pytest.raises(StartupError, match=r"metrics\.wandb_project .*\(pip install wandb\)"):
        check_available(c)
    check_available(load_config(environ={}, overrides=[]))  # no project: nothing needed
