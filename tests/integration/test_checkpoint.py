"""Checkpoints a resume can trust: every file's sha256 is in meta.json and checked, a
damaged or truncated checkpoint is skipped for the one before it, and nothing read at
resume is unpickled beyond tensors and plain containers."""

from __future__ import annotations

import json
import logging
import pickle
import random

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.config import load_config
from learner import checkpoint as ckpt
from learner.trainer import TorchTrainer


class _RunsCode:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # would create the marker file if unpickled


@pytest.fixture
def saved(tiny_model_dir, tmp_path):
    config = load_config(environ={}, overrides=['algorithm.teacher="frozen"'])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    trainer = TorchTrainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config, tok.pad_token_id)
    root = tmp_path / "checkpoints"
    paths = [ckpt.save(root, ckpt.CheckpointMeta(step, step, "h"), trainer, tok) for step in (1, 2)]
    return root, paths, trainer


def test_every_file_is_digested_and_an_intact_checkpoint_restores_the_rng_exactly(saved):
    root, (first, second), trainer = saved
    meta = ckpt.read_meta(second)
    assert {"model/model.safetensors", "optimizer.pt", "rng.pt"} <= meta.files.keys()
    assert "meta.json" not in meta.files and ckpt.damage(second) is None
    assert ckpt.latest(root) == second
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    ckpt.save(root, ckpt.CheckpointMeta(3, 3, "h"), trainer, None)
    want = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.restore_trainer(ckpt.latest(root), trainer)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == want


def test_a_checkpoint_from_before_committed_replaced_acked_through_still_reads(saved):
    _, (first, _), _ = saved
    meta = json.loads((first / ckpt.META).read_text())
    (first / ckpt.META).write_text(json.dumps({**meta, "acked_through": "1-0"}))
    assert ckpt.read_meta(first).step == 1 and ckpt.damage(first) is None


def test_a_flipped_byte_or_a_truncated_file_skips_to_the_checkpoint_before(saved, caplog):
    root, (first, second), _ = saved
    weights = second / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="learner.checkpoint"):
        assert ckpt.latest(root) == first
    assert "not matching its sha256: model/model.safetensors" in caplog.text
    optimizer = first / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    (first / "stray.bin").write_bytes(b"x")
    assert "not written by hsd: stray.bin" in ckpt.damage(first)
    assert ckpt.latest(root) is None


def test_a_planted_pickle_is_refused_even_with_forged_digests(saved, tmp_path):
    root, (_, second), trainer = saved
    marker = tmp_path / "code-ran"
    with (second / "rng.pt").open("wb") as f:
        pickle.dump(_RunsCode(marker), f)
    meta = json.loads((second / "meta.json").read_text())
    meta["files"]["rng.pt"] = ckpt.file_sha256(second / "rng.pt")  # the attacker can write meta.json too
    (second / "meta.json").write_text(json.dumps(meta))
    assert ckpt.latest(root) == second
    with pytest.raises(pickle.UnpicklingError):
        ckpt.restore_trainer(second, trainer)
    assert not marker.exists()


def test_a_resume_under_another_configuration_is_refused_naming_the_fields(tiny_model_dir, tmp_path):
    from core.config import config_hash, shared_view
    from learner.service import load_trainer
    from services.errors import StartupError

    run = [f'run.dir="{tmp_path}"', 'algorithm.teacher="frozen"']
    config = load_config(environ={}, overrides=run)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    trainer = TorchTrainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config, tok.pad_token_id)
    ckpt.save(tmp_path / "checkpoints", ckpt.CheckpointMeta(1, 1, config_hash(config), shared_view(config)),
              trainer, tok)
    other = load_config(environ={}, overrides=[*run, 'algorithm.method="grpo"', "actor.group_size=4"])
    with pytest.raises(StartupError, match=r"--resume: .*\(actor\.group_size: 8 → 4; "
                                           r"algorithm\.method: 'hsd' → 'grpo'\)"):
        load_trainer(other, str(tiny_model_dir), resume=True)
    assert load_trainer(other, str(tiny_model_dir), resume=True, force_config=True)[0] is not None  # forced
    # steps, ports and paths are not the run's identity: those resume
    same = load_config(environ={}, overrides=[*run, "run.steps=99", "metrics.port=9999"])
    resumed_from = load_trainer(same, str(tiny_model_dir), resume=True)[0]
    assert resumed_from == ckpt.latest(tmp_path / "checkpoints")
