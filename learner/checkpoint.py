"""Checkpoints: ``DIR/step-NNNNNN/`` holding

- ``model/``: Hugging Face weights + tokenizer (``from_pretrained`` / vLLM can serve it),
- the trainer's own state (``TorchTrainer.save_state``): ``optimizer.pt`` (optimiser and
  teacher policy) for torch; DeepSpeed's per-rank ZeRO partitions under ``deepspeed/``,
  which every rank writes (the checkpoint dir must be on storage all ranks share),
- ``rng.pt``: the RNG states (tensors and plain values only),
- ``meta.json``: step, policy version, the newest rollout-stream entry this checkpoint
  acknowledges (the replay's acked position), the config hash, and the sha256 of every
  other file.

Written to a temporary folder and renamed into place, so a kill -9 leaves either the
previous complete checkpoint or the new complete one. ``latest`` finds the newest
complete one whose files match their digests — a damaged or truncated one is skipped for
the one before, with a warning; the oldest beyond ``keep`` are removed. Nothing a resume
reads is unpickled beyond tensors and plain containers (``torch.load(weights_only=True)``;
the weights are safetensors), so a file placed in a checkpoint cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)
PREFIX = "step-"
META = "meta.json"


@dataclass
class CheckpointMeta:
    step: int
    version: int
    config_hash: str
    config: dict[str, Any] = field(default_factory=dict)  # core.config.shared_view of the run's config
    # [entry id, group id] of every group this checkpoint's weights trained on and commits
    committed: list[list[str]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256 of every other file


def _rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (loadable with weights_only)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                    cached], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` but meta.json (files hashed in parallel)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder) != Path(META))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return dict(zip((str(p.relative_to(folder)) for p in files), pool.map(file_sha256, files), strict=True))


def damage(path: Path) -> str | None:
    """What is wrong with the checkpoint at ``path`` (a file missing, added or not matching
    its digest), or None. A checkpoint written before digests were kept is taken as is."""
    meta = read_meta(path)
    if not meta.files:
        return None
    found = _digests(path)
    missing = sorted(meta.files.keys() - found.keys())
    changed = sorted(k for k in meta.files.keys() & found.keys() if meta.files[k] != found[k])
    added = sorted(found.keys() - meta.files.keys())
    if not (missing or changed or added):
        return None
    return "; ".join(f"{what}: {', '.join(names[:5])}" for what, names in
                     (("missing", missing), ("not matching its sha256", changed), ("not written by hsd", added))
                     if names)


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
    meta.files = _digests(tmp)
    (tmp / META).write_text(json.dumps(meta.__dict__))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.exists():
        return []
    done = [p for p in root.glob(f"{PREFIX}*") if (p / META).exists()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX):]))


def latest(root: str | Path) -> Path | None:
    """The newest checkpoint whose files are intact; damaged ones are skipped, with a warning."""
    for path in reversed(checkpoints(root)):
        try:
            problem = damage(path)
        except (OSError, ValueError, TypeError) as err:  # an unreadable or forged meta.json
            problem = f"meta.json unreadable: {err}"
        if problem is None:
            return path
        log.warning("checkpoint %s is damaged (%s): resuming from the one before it", path, problem)
    return None


def read_meta(path: Path) -> CheckpointMeta:
    meta = json.loads((path / META).read_text())
    meta.pop("acked_through", None)  # written by earlier versions; ``committed`` replaced it
    return CheckpointMeta(**meta)


def restore_trainer(path: Path, trainer: Any) -> None:
    trainer.load_state(path)
    _set_rng_state(torch.load(path / "rng.pt", weights_only=True))
