"""Left-padded batches whose scored tokens sit at the end, so only those logits are computed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


# Float32 logits one log-softmax call may hold (1 GiB): scoring several adapters per forward on a GPU
# makes many rows, and a row's answer positions times a large vocabulary add up fast.
LOGIT_CHUNK_ELEMENTS = 1 << 28


@dataclass(frozen=True)
class ScoredSequence:
    """Token ids whose last ``n_scored`` tokens are the continuation being scored."""

    ids: tuple[int, ...]
    n_scored: int


def collate(sequences: Sequence[ScoredSequence], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Left-pad to one length; positions count real tokens only."""
    length = max(len(s.ids) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, length - len(seq.ids):] = torch.tensor(seq.ids)
        mask[row, length - len(seq.ids):] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    n_scored = torch.tensor([s.n_scored for s in sequences])
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device),
            "position_ids": positions.to(device), "n_scored": n_scored.to(device)}


def length_batches(order: Sequence[int], lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """``order`` cut into consecutive batches of at most ``batch_size`` rows whose padded size (rows x the
    longest row's length) stays within ``batch_size`` x the median length.

    Every row of a batch is padded to its longest, so with a row cap alone a few long requests pad a
    whole batch (256 PIQA questions in one batch: 4.4x the real tokens). With the budget the long tail
    goes into smaller batches, and no batch is larger than ``batch_size`` rows of the longest would be.
    ``order`` should list the rows by ascending length.
    """
    if not order:
        return []
    budget = batch_size * sorted(lengths[i] for i in order)[len(order) // 2]
    batches: list[list[int]] = [[]]
    longest = 0
    for i in order:
        longest = max(longest, lengths[i])
        if batches[-1] and (len(batches[-1]) == batch_size or (len(batches[-1]) + 1) * longest > budget):
            batches.append([])
            longest = lengths[i]
        batches[-1].append(i)
    return batches


@dataclass(frozen=True)
class Stacking:
    """Forwards that stack one batch for a group of ``adapters`` adapters (LoRA slots), at most ``rows`` rows
    each, each costing as much as ``fixed_share`` x ``rows`` median-length tokens over and above the
    padded tokens it computes (kernel launches, small matmuls)."""

    rows: int
    adapters: int
    fixed_share: float


def stacked_forwards(copies: int, rows: int, stack_rows: int) -> int:
    """Forwards that score a batch of ``rows`` rows for ``copies`` stacked copies, at most ``stack_rows`` rows
    each (at least one copy a forward)."""
    return -(-copies // max(1, min(copies, stack_rows // rows)))


def stacked_batches(order: Sequence[int], lengths: Sequence[int], batch_size: int, stacking: Stacking
                    ) -> list[list[int]]:
    """``order`` (by ascending length) cut into batches of at most ``batch_size`` rows where the work of
    scoring them for a group of stacked adapters is least: padded tokens plus ``stacking``'s fixed cost
    for each forward (a batch of r rows takes ceil(group / (rows // r)) of them).

    With a batch stacked for many adapters, cutting it in two barely adds forwards (each half stacks twice
    as many), so unlike ``length_batches`` the cuts can follow the lengths closely; the fixed cost keeps
    them from splitting what a forward's overhead would eat. One pass of dynamic programming over the
    cut points: O(len(order) x batch_size).
    """
    n = len(order)
    if n == 0:
        return []
    sorted_lengths = [lengths[i] for i in order]
    group = max(1, stacking.adapters)
    fixed = stacking.fixed_share * stacking.rows * sorted_lengths[n // 2]
    best = [0.0] + [float("inf")] * n  # best[j]: least work for the first j rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = sorted_lengths[j - 1]
        for i in range(max(0, j - batch_size), j):
            rows = j - i
            work = best[i] + stacked_forwards(group, rows, stacking.rows) * fixed + group * rows * longest
            if work < best[j]:
                best[j], cut[j] = work, i
    batches, j = [], n
    while j > 0:
        batches.append(list(order[cut[j]:j]))
        j = cut[j]
    return batches[::-1]


def continuation_logprobs(model: nn.Module, batch: dict[str, torch.Tensor], copies: int = 1
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the scored tokens: ``(logprobs [copies * B, K], mask [copies * B, K])``, K = max scored.

    Only the last K+1 positions go through the LM head (``logits_to_keep``), which saves most of
    the memory and time a full-vocabulary head costs on long prompts. ``copies`` stacks the rows as
    ``repeat_rows`` does.
    """
    batch = repeat_rows(batch, copies)
    n_scored = batch["n_scored"]
    keep = int(n_scored.max())
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], logits_to_keep=keep + 1)
    logits = out.logits[:, :-1, :]
    targets = batch["input_ids"][:, -keep:]
    # the float32 log-softmax runs on row chunks, so the head's logits are held once, not three times
    rows = max(1, LOGIT_CHUNK_ELEMENTS // (keep * logits.shape[-1]))
    logprobs = torch.cat([torch.log_softmax(chunk.float(), dim=-1).gather(-1, t.unsqueeze(-1)).squeeze(-1)
                          for chunk, t in zip(logits.split(rows), targets.split(rows))])
    offsets = torch.arange(keep, device=n_scored.device).unsqueeze(0)
    mask = offsets >= (keep - n_scored).unsqueeze(1)
    return logprobs * mask, mask


def answer_losses(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each row's mean cross-entropy over its scored tokens ``[B]``, differentiable: the loss training
    minimises and the prefilter's probe differentiates (selection's scores divide in float64 instead)."""
    logprobs, mask = continuation_logprobs(model, batch)
    return -logprobs.sum(dim=1) / mask.sum(dim=1)


def repeat_rows(batch: dict[str, torch.Tensor], copies: int) -> dict[str, torch.Tensor]:
    """The batch stacked ``copies`` times along rows (copy-major), for scoring several adapters in one forward."""
    return batch if copies == 1 else {k: v.repeat(copies, *([1] * (v.dim() - 1))) for k, v in batch.items()}


def last_token_logprobs(model: nn.Module, batch: dict[str, torch.Tensor], copies: int = 1) -> torch.Tensor:
    """Log-softmax over the vocabulary at the last position of each (left-padded) prompt: ``[copies * B, V]``."""
    batch = repeat_rows(batch, copies)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], logits_to_keep=1)
    return torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)


@dataclass(frozen=True)
class PrefixBatch:
    """Prompts (left-padded) and their C continuations each (right-padded), collated once."""

    prompts: dict[str, torch.Tensor]
    continuation_ids: torch.Tensor  # [B * C, L]
    continuation_mask: torch.Tensor  # [B * C, L]
    n_choices: int


def prefix_batch(prompts: Sequence[tuple[int, ...]], continuations: Sequence[Sequence[tuple[int, ...]]], pad_id: int,
                 device: torch.device) -> PrefixBatch:
    """Collate prompts with the same number of continuations each."""
    flat = [c for conts in continuations for c in conts]
    length = max(len(c) for c in flat)
    cont_ids = torch.full((len(flat), length), pad_id, dtype=torch.long)
    cont_mask = torch.zeros_like(cont_ids)
    for row, ids in enumerate(flat):
        cont_ids[row, :len(ids)] = torch.tensor(ids)
        cont_mask[row, :len(ids)] = 1
    return PrefixBatch(collate([ScoredSequence(p, 1) for p in prompts], pad_id, device), cont_ids.to(device),
                       cont_mask.to(device), len(continuations[0]))


def prefix_batch_logprobs(model: nn.Module, batch: PrefixBatch, copies: int = 1) -> torch.Tensor:
    """Summed log-probabilities ``[copies * B, C]`` of each prompt's continuations, each prompt encoded once.

    The prompts' KV cache is computed once and repeated for every continuation, so scoring C choices
    costs about one prompt plus C short continuations instead of C full sequences. With ``copies`` > 1
    the rows are stacked copy-major (row ``g * B + b``), which is how several LoRA slots share a forward.
    """
    n_choices = batch.n_choices
    prompts = repeat_rows(batch.prompts, copies)
    out = model(input_ids=prompts["input_ids"], attention_mask=prompts["attention_mask"],
                position_ids=prompts["position_ids"], use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1).repeat_interleave(n_choices, dim=0)
    cache = out.cache
    cache.batch_repeat_interleave(n_choices)
    cont_ids = batch.continuation_ids.repeat(copies, 1)
    cont_mask = batch.continuation_mask.repeat(copies, 1)
    prompt_mask = prompts["attention_mask"].repeat_interleave(n_choices, dim=0)
    start = prompt_mask.sum(dim=1, keepdim=True)
    positions = start + torch.arange(cont_ids.shape[1], device=cont_ids.device).unsqueeze(0)
    out = model(input_ids=cont_ids, attention_mask=torch.cat([prompt_mask, cont_mask], dim=1),
                position_ids=positions, cache=cache, use_cache=True)
    later = torch.log_softmax(out.logits[:, :-1, :].float(), dim=-1)
    logprobs = torch.cat([first.unsqueeze(1), later], dim=1).gather(-1, cont_ids.unsqueeze(-1)).squeeze(-1)
    return (logprobs * cont_mask).sum(dim=1).view(-1, n_choices)


def shared_prefix_logprobs(model: nn.Module, prompts: Sequence[tuple[int, ...]],
                           continuations: Sequence[Sequence[tuple[int, ...]]], pad_id: int,
                           device: torch.device) -> torch.Tensor:
    """Summed log-probabilities ``[B, C]`` of C continuations per prompt (see ``prefix_batch_logprobs``).

    Every prompt in the call must have the same number of continuations.
    """
    return prefix_batch_logprobs(model, prefix_batch(prompts, continuations, pad_id, device))
