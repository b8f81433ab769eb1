"""Checkpoints: ``DIR/step-NNNNNN/`` holding

- ``model/``: Hugging Face weights + tokenizer (``from_pretrained`` / vLLM can serve it),
- the trainer's own state (``TorchTrainer.save_state``): ``optimizer.pt`` (optimiser and
  teacher policy) for torch; DeepSpeed's per-rank ZeRO partitions under ``deepspeed/``,
  which every rank writes (the checkpoint dir must be on storage all ranks share),
- ``rng.pt``: the RNG states,
- ``meta.json``: step, policy version, the newest rollout-stream entry this checkpoint
  acknowledges (the replay's acked position), and the config hash.

Written to a temporary folder and renamed into place, so a kill -9 leaves either the
previous complete checkpoint or the new complete one. ``latest`` finds the newest
complete one; the oldest beyond ``keep`` are removed.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

PREFIX = "step-"


@dataclass
class CheckpointMeta:
    step: int
    version: int
    acked_through: str  # newest rollout entry id acknowledged with this checkpoint ("" if none)
    config_hash: str


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(root: str | Path, meta: CheckpointMeta, trainer: Any, tokenizer: Any, keep: int = 3) -> Path:
    """Called by the lead process; ``trainer``'s collective calls bring the others along."""
    root = Path(root)
    final = root / f"{PREFIX}{meta.step:06d}"
    tmp = root / f".tmp-{PREFIX}{meta.step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "model").mkdir(parents=True)
    trainer.model.save_pretrained(tmp / "model", state_dict=trainer.full_state_dict())
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp / "model")
    trainer.save_state(tmp)
    torch.save(_rng_state(), tmp / "rng.pt")
    (tmp / "meta.json").write_text(json.dumps(meta.__dict__))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.exists():
        return []
    done = [p for p in root.glob(f"{PREFIX}*") if (p / "meta.json").exists()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX):]))


def latest(root: str | Path) -> Path | None:
    found = checkpoints(root)
    return found[-1] if found else None


def read_meta(path: Path) -> CheckpointMeta:
    return CheckpointMeta(**json.loads((path / "meta.json").read_text()))


def restore_trainer(path: Path, trainer: Any) -> None:
    trainer.load_state(path)
    _set_rng_state(torch.load(path / "rng.pt", weights_only=False))
