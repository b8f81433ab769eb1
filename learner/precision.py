"""Float32 master weights for a model whose parameters are bf16 or fp16.

Low-precision parameters make every forward and backward cheaper and the published
weights half the size; their updates, added straight to bf16 values, would round away
(bf16 keeps 8 significant bits: an update below 1/256 of a weight is lost). The optimiser
therefore steps float32 copies, and the model receives the rounded result.

Lifecycle::

    masters = MasterWeights(model.parameters())      # float32 copies, same device
    optimizer = AdamW(masters.params)                 # its states are float32 too
    each step:  backward → model grads (low precision)
                masters.take_grads()                  # master.grad ← p.grad (float32)
                clip + optimizer.step()               # on the masters
                masters.give_weights()                # p ← master, rounded to p's dtype
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class MasterWeights:
    def __init__(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        self.model_params = [p for p in parameters if p.requires_grad]
        self.params = [p.detach().float().clone().requires_grad_(True) for p in self.model_params]

    def take_grads(self) -> None:
        for master, p in zip(self.params, self.model_params, strict=True):
            master.grad = None if p.grad is None else p.grad.float()

    @torch.no_grad()
    def give_weights(self) -> None:
        for master, p in zip(self.params, self.model_params, strict=True):
            p.copy_(master)

    def state_dict(self) -> list[torch.Tensor]:
        return [m.detach() for m in self.params]

    @torch.no_grad()
    def load_state_dict(self, state: list[torch.Tensor]) -> None:
        for master, saved in zip(self.params, state, strict=True):
            master.copy_(saved)
        self.give_weights()
