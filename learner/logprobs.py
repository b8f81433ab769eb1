"""Reading a response's log-probs out of a causal LM, at the response positions only.

For a sequence ``ids`` whose response occupies ``ids[start:start+n]``, the hidden state at
position p predicts token p+1, so the response is predicted at positions
``start-1 : start-1+n`` and log π(y_t) = log_softmax(z_{start-1+t})[y_t] with z = h·Wᵀ
(W the output embedding).

Two routes compute the same numbers:

- the **head route** (the learner): the backbone's hidden states h are gathered at the
  response positions ([B, T, H]); the vocabulary-wide logits z = h·Wᵀ exist for one chunk
  of rows at a time (``chunk_tokens`` positions), never for the prompt or the padding, and
  never for the whole batch. :func:`head_scores` scores without gradients (the teacher,
  π_θold); :func:`head_loss` computes a loss *and its gradient* chunk by chunk in one pass
  (:class:`_ChunkedHeadLoss`), so the backward pass holds no logits either;
- the **dense route** (:func:`score_responses`, :func:`dense_response_logits`): the model's
  own forward returns [B, L, V] logits and the response positions are gathered from them.
  Small models and tools use it, and the learner where the head route cannot run (a model
  whose logits are not h·Wᵀ, DeepSpeed ZeRO-3's partitioned head).

The batches are right-padded and run *without* an attention mask: under the causal mask a
real token attends only to earlier positions, which are all real, so the padding after a
sequence cannot change it; without a mask, sdpa may take its fused causal kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from core.views import ScoringInput

ChunkLoss = Callable[[slice, torch.Tensor], torch.Tensor]


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[targets], computed in float32.

    logits [..., V], targets [...] (int64) -> [...]. Uses logsumexp instead of a full
    log_softmax so that only one [..., V] float32 temporary is made.
    """
    logits = logits.float()
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(z)) = logsumexp(z) − Σ_v softmax(z)_v · z_v, in float32: [..., V] -> [...]."""
    z = logits.float()
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    p = (z - lse).exp_()  # the one [..., V] temporary beside z (in place from here)
    return lse.squeeze(-1) - p.mul_(z).sum(-1)


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


def response_targets(inputs: Sequence[ScoringInput]) -> tuple[torch.Tensor, torch.Tensor]:
    """The responses right-padded to the longest: ids [B, N] (padding 0) and mask [B, N]."""
    n = max((x.length for x in inputs), default=0)
    ids = torch.zeros((len(inputs), n), dtype=torch.long)
    mask = torch.zeros((len(inputs), n), dtype=torch.bool)
    for row, x in enumerate(inputs):
        ids[row, : x.length] = torch.tensor(x.response, dtype=torch.long)
        mask[row, : x.length] = True
    return ids, mask


def response_positions(inputs: Sequence[ScoringInput]) -> torch.Tensor:
    """[B, N] the sequence position that predicts each response token (0 on padding)."""
    n = max((x.length for x in inputs), default=0)
    out = torch.zeros((len(inputs), n), dtype=torch.long)
    for row, x in enumerate(inputs):
        out[row, : x.length] = torch.arange(x.start - 1, x.start - 1 + x.length)
    return out


def gather_positions(states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """states [B, L, D] at positions [B, N] -> [B, N, D]."""
    return states.gather(1, positions.to(states.device).unsqueeze(-1).expand(-1, -1, states.shape[-1]))


# ---------------------------------------------------------------------- dense route


def dense_response_logits(
    model: Any, inputs: Sequence[ScoringInput], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(response logits [B, N, V], response ids [B, N], mask [B, N]) from the model's own
    forward (padding positions: mask 0, id 0)."""
    device = next(model.parameters()).device
    ids, _ = pad_batch(inputs, pad_id, device)
    logits = gather_positions(model(input_ids=ids, use_cache=False).logits, response_positions(inputs))
    targets, mask = response_targets(inputs)
    return logits, targets.to(device), mask.to(device)


def score_responses(
    model: Any, inputs: Sequence[ScoringInput], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass over a batch; returns (response log-probs [B, N], response logits
    [B, N, V], mask [B, N]). Gradients flow unless the caller disables them."""
    logits, targets, mask = dense_response_logits(model, inputs, pad_id)
    return token_logprobs(logits, targets) * mask, logits, mask


# ---------------------------------------------------------------------- head route


def split_causal_lm(model: Any) -> tuple[nn.Module, nn.Parameter]:
    """(backbone, output embedding weight W [V, H]) of a Hugging Face causal LM."""
    return model.get_decoder(), model.get_output_embeddings().weight


def logits_are_linear_in_hidden(model: Any, probe_ids: Sequence[int]) -> bool:
    """Whether the model's logits are exactly h·Wᵀ (no bias, scale or soft-capping), which
    the head route assumes: checked once on a few tokens."""
    backbone, weight = split_causal_lm(model)
    device = weight.device
    ids = torch.tensor([list(probe_ids)], device=device)
    with torch.no_grad():
        want = model(input_ids=ids, use_cache=False).logits.float()
        hidden = backbone(input_ids=ids, use_cache=False).last_hidden_state
        got = nn.functional.linear(hidden, weight).float()
    return torch.allclose(got, want, rtol=1e-4, atol=1e-4)


def response_hidden(
    backbone: nn.Module, inputs: Sequence[ScoringInput], pad_id: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden states at the response positions [B, N, H], response ids [B, N], mask [B, N])."""
    ids, _ = pad_batch(inputs, pad_id, device)
    states = backbone(input_ids=ids, use_cache=False).last_hidden_state
    targets, mask = response_targets(inputs)
    return gather_positions(states, response_positions(inputs)), targets.to(device), mask.to(device)


def packed_response_hidden(
    backbone: nn.Module, inputs: Sequence[ScoringInput], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`response_hidden` with the batch packed into one row instead of padded: the
    sequences end to end, position ids restarting at 0 for each, no attention mask. From
    such position ids transformers keeps every sequence's attention inside itself — a
    block-diagonal causal mask under sdpa or eager, variable-length kernels under
    flash_attention_2 — so no position is spent on padding."""
    lengths = [len(x.ids) for x in inputs]
    ids = torch.tensor([[t for x in inputs for t in x.ids]], dtype=torch.long, device=device)
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0).to(device)
    states = backbone(input_ids=ids, position_ids=position_ids, use_cache=False).last_hidden_state[0]
    offsets = torch.tensor([0, *lengths[:-1]]).cumsum(0)
    targets, mask = response_targets(inputs)
    positions = (response_positions(inputs) + offsets[:, None]) * mask  # padding: row 0, masked out
    return states[positions.to(states.device)], targets.to(device), mask.to(device)


def shared_prefix_hidden(
    backbone: nn.Module, inputs: Sequence[ScoringInput], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """:func:`response_hidden` of the batch, with each distinct context (``ids[:start]``)
    run once: teacher views that share a prompt + peer (HSD) or prompt + answer (OPSD)
    differ only in the response. ``None`` when no two inputs share a context.

    Two forward passes. The U distinct contexts, left-padded to P so that every last
    position is P-1, give the KV cache [U, P] and the state that predicts y_0. The cache
    rows are then repeated per input (``batch_select_indices``) and the responses, minus
    their last token, right-padded to W, run against it with position ids continuing each
    context and an attention mask [B, P + W] that hides both paddings.
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
    head = backbone(input_ids=ctx_ids.to(device), attention_mask=ctx_mask.to(device),
                    position_ids=ctx_pos.to(device), use_cache=True)
    ids, mask = response_targets(inputs)
    index = torch.tensor(which, dtype=torch.long, device=device)
    first = head.last_hidden_state[index, -1].unsqueeze(1)
    width_w = ids.shape[1] - 1
    if width_w == 0:
        return first, ids.to(device), mask.to(device)
    cache = head.past_key_values
    cache.batch_select_indices(index)
    tail_mask = mask[:, 1:].long()  # y_0..y_{n-2} are fed; each predicts the next
    lengths = torch.tensor([len(x.ids) - x.length for x in inputs], dtype=torch.long)
    tail = backbone(input_ids=(ids[:, :-1] * tail_mask).to(device),
                    attention_mask=torch.cat([ctx_mask[index.cpu()], tail_mask], dim=1).to(device),
                    position_ids=(lengths[:, None] + torch.arange(width_w)).to(device),
                    past_key_values=cache, use_cache=False).last_hidden_state
    return torch.cat([first, tail], dim=1), ids.to(device), mask.to(device)


def row_chunks(rows: int, width: int, chunk_tokens: int) -> Iterator[slice]:
    """Consecutive row ranges of at most ``chunk_tokens`` positions each (at least one row)."""
    step = max(1, chunk_tokens // max(width, 1))
    for lo in range(0, rows, step):
        yield slice(lo, min(rows, lo + step))


def chunk_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """z = h·Wᵀ in the operands' dtype, returned as float32 (the precision of every
    log-prob and loss downstream)."""
    return nn.functional.linear(hidden, weight).float()


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits if temperature == 1.0 else logits / temperature


@torch.no_grad()
def head_scores(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, *,
    temperature: float = 1.0, chunk_tokens: int = 1024, topk: int = 0, compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Log-probs of the targets under softmax(h·Wᵀ / temperature) [B, N] (0 on padding),
    and with ``topk`` the k largest scaled logits and their token ids [B, N, k] each."""
    dtype = compute_dtype or hidden.dtype
    w = weight.to(dtype)
    logp = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
    k = min(topk, weight.shape[0])
    values = torch.zeros((*targets.shape, k), dtype=torch.float32, device=hidden.device) if k else None
    indices = torch.zeros((*targets.shape, k), dtype=torch.long, device=hidden.device) if k else None
    for rows in row_chunks(hidden.shape[0], hidden.shape[1], chunk_tokens):
        logits = _scaled(chunk_logits(hidden[rows].to(dtype), w), temperature)
        logp[rows] = token_logprobs(logits, targets[rows]) * mask[rows]
        if k:
            top = logits.topk(k, dim=-1)
            values[rows], indices[rows] = top.values, top.indices
        del logits
    return logp, (values, indices) if k else None


def head_loss(
    hidden: torch.Tensor, weight: torch.Tensor, loss_of_chunk: ChunkLoss, *,
    temperature: float = 1.0, chunk_tokens: int = 1024, compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Σ over row chunks of ``loss_of_chunk(rows, z_rows / temperature)``, differentiable in
    ``hidden`` and ``weight``. The loss must be a sum of per-row terms (every loss of
    methods.losses is, with the global batch's normalisation), so that each chunk's
    gradient is computed, and its logits freed, before the next chunk's exist."""
    return _ChunkedHeadLoss.apply(hidden, weight, loss_of_chunk, temperature, chunk_tokens,
                                  compute_dtype or hidden.dtype)


class _ChunkedHeadLoss(torch.autograd.Function):
    """Forward: for each chunk of rows, z = h·Wᵀ (a leaf), the chunk's loss, and by
    autograd ∂loss/∂z; then ∂loss/∂h = ∂z·W and ∂loss/∂W += ∂zᵀ·h, and z is freed.
    Backward: those gradients times the incoming scalar. The head's matmuls run once
    forward and twice backward — as in an ordinary backward — with no recomputation."""

    @staticmethod
    def forward(ctx, hidden, weight, loss_of_chunk, temperature, chunk_tokens, compute_dtype):
        w = weight.detach().to(compute_dtype)
        grad_hidden = torch.zeros_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for rows in row_chunks(hidden.shape[0], hidden.shape[1], chunk_tokens):
            h = hidden[rows].detach().to(compute_dtype)
            with torch.enable_grad():
                logits = chunk_logits(h, w).requires_grad_()
                loss = loss_of_chunk(rows, _scaled(logits, temperature))
                grad_logits = torch.autograd.grad(loss, logits, allow_unused=True)[0] if loss.requires_grad else None
            total += loss.detach()
            if grad_logits is None:  # a chunk whose loss does not depend on the logits
                continue
            g = grad_logits.to(compute_dtype)
            del logits, grad_logits
            grad_hidden[rows] = (g @ w).to(hidden.dtype)
            grad_weight += (g.flatten(0, 1).T @ h.flatten(0, 1)).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (grad_hidden * grad_output.to(grad_hidden.dtype),
                (grad_weight * grad_output).to(ctx.weight_dtype), None, None, None, None)
