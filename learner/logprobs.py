"""Reading a response's log-probs out of a causal LM's logits.

For a sequence ``ids`` whose response occupies ``ids[start:start+n]``, the logits at
position p predict token p+1, so the response's logits are ``logits[start-1 : start-1+n]``
and log π(y_t) = log_softmax(logits[start-1+t])[y_t].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from learner.context import ScoringInput


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[targets], computed in float32.

    logits [..., V], targets [...] (int64) -> [...]. Uses logsumexp instead of a full
    log_softmax so that only one [..., V] float32 temporary is made.
    """
    logits = logits.float()
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def response_slice(start: int, length: int) -> slice:
    """Positions of the logits that predict ids[start : start+length]."""
    return slice(start - 1, start - 1 + length)


def pad_batch(
    inputs: Sequence[ScoringInput], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids [B, L] and attention mask [B, L] (right padding keeps the
    position ids of real tokens unchanged in a causal LM)."""
    width = max(len(x.ids) for x in inputs)
    ids = torch.full((len(inputs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(inputs), width), dtype=torch.long)
    for row, x in enumerate(inputs):
        ids[row, : len(x.ids)] = torch.tensor(x.ids, dtype=torch.long)
        mask[row, : len(x.ids)] = 1
    return ids.to(device), mask.to(device)


def response_logits(
    logits: torch.Tensor, inputs: Sequence[ScoringInput]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align the responses of a padded batch.

    logits [B, L, V] -> (response logits [B, N, V], response ids [B, N], mask [B, N]) with
    N the longest response; padding positions have mask 0 and id 0.
    """
    n = max((x.length for x in inputs), default=0)
    out = logits.new_zeros((len(inputs), n, logits.shape[-1]))
    ids = torch.zeros((len(inputs), n), dtype=torch.long, device=logits.device)
    mask = torch.zeros((len(inputs), n), dtype=torch.bool, device=logits.device)
    for row, x in enumerate(inputs):
        out[row, : x.length] = logits[row, response_slice(x.start, x.length)]
        ids[row, : x.length] = torch.tensor(x.response, dtype=torch.long)
        mask[row, : x.length] = True
    return out, ids, mask


def score_responses(
    model: Any, inputs: Sequence[ScoringInput], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass over a batch; returns (response log-probs [B, N], response logits
    [B, N, V], mask [B, N]). Gradients flow unless the caller disables them."""
    device = next(model.parameters()).device
    ids, attn = pad_batch(inputs, pad_id, device)
    logits = model(input_ids=ids, attention_mask=attn).logits
    resp_logits, resp_ids, mask = response_logits(logits, inputs)
    return token_logprobs(resp_logits, resp_ids) * mask, resp_logits, mask
