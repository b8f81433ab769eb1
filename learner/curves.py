"""Where the learner's curves go besides ``metrics.jsonl``: TensorBoard event files and
Weights & Biases, for users who follow runs there.

One interface (:class:`CurveSink`: scalars at a step, close), one implementation per tool,
and :func:`curve_sinks` picks them from ``[metrics]``:

- ``tensorboard = true`` (default): event files in ``RUN_DIR/tensorboard``
  (``tensorboard --logdir RUN_DIR``); a resumed run adds a file beside the old ones and its
  steps go on from the checkpoint's.
- ``wandb_project = "..."``: a W&B run named after the run, its config (secrets masked)
  attached; ``wandb_mode = "offline"`` writes ``RUN_DIR/wandb`` without a network. The run
  id is derived from the run dir, so ``hsd run --resume`` continues the same W&B run.

Tags: ``train/<metric>`` for each step's metrics, ``eval/accuracy``,
``eval/accuracy_k<k>`` and ``eval/reference_logprob`` for each held-out evaluation.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any, Protocol

from core.config import Config, shown
from services.errors import StartupError

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"


class CurveSink(Protocol):
    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class TensorBoardSink:
    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # a few records a step: flushing keeps a live TensorBoard current

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, config: Config, run_dir: Path) -> None:
        import wandb

        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=config.metrics.wandb_project, name=config.run.name, id=wandb_run_id(run_dir),
                              resume="allow", dir=str(run_dir), mode=config.metrics.wandb_mode,
                              config=shown(config), settings=wandb.Settings(console="off", silent=True))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        import wandb

        self.run.finish()
        # finish() only asks wandb's service process to close the stream; teardown joins it, so
        # the run's files are complete when the learner (or a reader after it) goes on
        wandb.teardown()


def wandb_run_id(run_dir: Path) -> str:
    """Stable per run dir, so that a resumed run continues its W&B run."""
    return "hsd-" + hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def check_available(config: Config) -> None:
    """At start, before any training: a W&B project needs the wandb package."""
    if config.metrics.wandb_project is not None and importlib.util.find_spec("wandb") is None:
        raise StartupError("metrics.wandb_project is set but the wandb package is not installed "
                           "(pip install wandb), or unset metrics.wandb_project")


def curve_sinks(config: Config, run_dir: Path) -> list[CurveSink]:
    sinks: list[CurveSink] = []
    if config.metrics.tensorboard:
        sinks.append(TensorBoardSink(run_dir / TENSORBOARD_DIR))
    if config.metrics.wandb_project is not None:
        sinks.append(WandbSink(config, run_dir))
    return sinks


def step_scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl step record's numbers as ``train/`` tags (not its step, version or time)."""
    return {f"train/{k}": float(v) for k, v in record.items()
            if k not in ("kind", "step", "version", "time") and isinstance(v, int | float) and not isinstance(v, bool)}


def eval_scalars(accuracy: float, by_length: dict[int, float], reference_logprob: float | None) -> dict[str, float]:
    out = {"eval/accuracy": accuracy, **{f"eval/accuracy_k{k}": a for k, a in by_length.items()}}
    if reference_logprob is not None:
        out["eval/reference_logprob"] = reference_logprob
    return out
