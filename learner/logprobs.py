"""Reading a response's log-probs out of a causal LM's logits.

For a sequence ``ids`` whose response occupies ``ids[start:start+n]``, the logits at
position p predict token p+1, so the response's logits are ``logits[start-1 : start-1+n]``
and log π(y_t) = log_softmax(logits[start-1+t])[y_t].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from core.views import ScoringInput


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
    ids, mask = response_targets(inputs)
    out = logits.new_zeros((len(inputs), ids.shape[1], logits.shape[-1]))
    for row, x in enumerate(inputs):
        out[row, : x.length] = logits[row, response_slice(x.start, x.length)]
    return out, ids.to(logits.device), mask.to(logits.device)


def response_targets(inputs: Sequence[ScoringInput]) -> tuple[torch.Tensor, torch.Tensor]:
    """The responses right-padded to the longest: ids [B, N] (padding 0) and mask [B, N]."""
    n = max((x.length for x in inputs), default=0)
    ids = torch.zeros((len(inputs), n), dtype=torch.long)
    mask = torch.zeros((len(inputs), n), dtype=torch.bool)
    for row, x in enumerate(inputs):
        ids[row, : x.length] = torch.tensor(x.response, dtype=torch.long)
        mask[row, : x.length] = True
    return ids, mask


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


def shared_prefix_logits(
    model: Any, inputs: Sequence[ScoringInput], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """:func:`response_logits` of the batch, with each distinct context (``ids[:start]``)
    run once: teacher views that share a prompt + peer (HSD) or prompt + answer (OPSD)
    differ only in the response. ``None`` when no two inputs share a context.

    Two forward passes. The U distinct contexts, left-padded to P so that every last
    position is P-1, give the KV cache [U, P] and the logits that predict y_0. The cache
    rows are then repeated per input (``batch_select_indices``) and the responses, minus
    their last token, right-padded to W, run against it with position ids continuing each
    context and an attention mask [B, P + W] that hides both paddings. Logits are computed
    for response positions only, never for the contexts' tokens.
    """
    contexts: dict[tuple[int, ...], int] = {}
    which = [contexts.setdefault(tuple(x.ids[: x.start]), len(contexts)) for x in inputs]
    if len(contexts) == len(inputs):
        return None
    width_p = max(len(c) for c in contexts)
    ctx_ids = torch.zeros((len(contexts), width_p), dtype=torch.long)
    ctx_mask = torch.zeros((len(contexts), width_p), dtype=torch.long)
    ctx_pos = torch.zeros((len(contexts), width_p), dtype=torch.long)
    for u, c in enumerate(contexts):
        ctx_ids[u, width_p - len(c):] = torch.tensor(c, dtype=torch.long)
        ctx_mask[u, width_p - len(c):] = 1
        ctx_pos[u, width_p - len(c):] = torch.arange(len(c))
    head = model(input_ids=ctx_ids.to(device), attention_mask=ctx_mask.to(device),
                 position_ids=ctx_pos.to(device), use_cache=True, logits_to_keep=1)
    ids, mask = response_targets(inputs)
    n = ids.shape[1]
    out = head.logits.new_zeros((len(inputs), n, head.logits.shape[-1]))
    index = torch.tensor(which, dtype=torch.long, device=device)
    out[:, 0] = head.logits[index, -1]
    width_w = n - 1
    if width_w > 0:
        cache = head.past_key_values
        cache.batch_select_indices(index)
        tail_mask = mask[:, 1:].long()  # y_0..y_{n-2} are fed; each predicts the next
        lengths = torch.tensor([len(x.ids) - x.length for x in inputs], dtype=torch.long)
        tail = model(input_ids=(ids[:, :-1] * tail_mask).to(device),
                     attention_mask=torch.cat([ctx_mask[index.cpu()], tail_mask], dim=1).to(device),
                     position_ids=(lengths[:, None] + torch.arange(width_w)).to(device),
                     past_key_values=cache, use_cache=False).logits
        out[:, 1:] = tail
    return out, ids.to(device), mask.to(device)
