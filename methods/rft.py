"""RFT (rejection-sampling fine-tuning): the model fine-tuned on its own samples that the
verifier accepted, ℓ_t = −log π_θ(y_t | x) over every successful sample's tokens; failed
samples are left out, and there is no teacher and no advantage. A baseline of SD-Zero's
paper: what training on one's own successes alone buys, at the same samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.records import RolloutGroup
from methods.base import SupervisedMethod, TrainingSample
from methods.peers import PeerTag


class RFT(SupervisedMethod):
    name = "rft"

    def training_samples(self, group: RolloutGroup, tags: Sequence[PeerTag], tokenizer: Any) -> list[TrainingSample]:
        return [s for s in super().training_samples(group, tags, tokenizer) if s.success]
