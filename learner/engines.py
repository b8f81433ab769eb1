"""The training engine ``[learner] engine`` names: torch (one process) or DeepSpeed."""

from __future__ import annotations

import torch

from core.config import Config
from learner.trainer import TorchTrainer


def make_trainer(model: torch.nn.Module, config: Config, pad_id: int) -> TorchTrainer:
    if config.learner.engine == "deepspeed":
        from learner.deepspeed_trainer import DeepSpeedTrainer

        return DeepSpeedTrainer(model, config, pad_id)
    return TorchTrainer(model, config, pad_id)
