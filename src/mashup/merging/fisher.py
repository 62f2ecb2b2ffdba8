"""Fisher merging (Matena & Raffel 2022): a per-entry average weighted by diagonal Fisher information."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mashup.errors import MergeError
from mashup.merging.base import (MergeMethod, MergeParams, chunks, flat_chunk, require_statistics, safe_divisor,
                                 stack_weights)


def estimate_fisher(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]],
                    max_examples: int | None = None) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: the mean over examples of the squared LM-loss gradient.

    Each example gets its own backward pass (squaring a batch gradient would not be a Fisher).
    Only parameters with ``requires_grad`` are covered, a tied one under each of its names (one tensor);
    batches hold input_ids, attention_mask, labels.
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    aliases = {name: p for name, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the deterministic model
    seen = 0
    for batch in batches:
        for row in range(batch["input_ids"].shape[0]):
            if max_examples is not None and seen >= max_examples:
                break
            model.zero_grad(set_to_none=True)
            example = {key: value[row:row + 1] for key, value in batch.items()}
            model(**example).loss.backward()
            for name, p in params.items():
                if p.grad is not None:
                    fisher[name] += p.grad.detach().float() ** 2
            seen += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    by_tensor = {id(params[name]): f / max(seen, 1) for name, f in fisher.items()}
    return {name: by_tensor[id(p)] for name, p in aliases.items()}


class FisherMerge(MergeMethod):
    """Σ w_i·F_i·x_i / Σ w_i·F_i per entry; entries where every F_i is 0 fall back to the weighted mean."""

    statistic = "fisher"

    def merge(self, tensors: Sequence[torch.Tensor], weights: torch.Tensor, reference: torch.Tensor | None,
              params: MergeParams, generator: torch.Generator | None) -> torch.Tensor:
        fishers = require_statistics(params, len(tensors), self.name)
        bad = next((f for f in fishers if f.shape != tensors[0].shape), None)
        if bad is not None:  # entries are matched by position: another shape would weight the wrong ones
            raise MergeError(f"Fisher statistic has shape {tuple(bad.shape)} but the tensor {tuple(tensors[0].shape)}",
                             None, "pass one Fisher tensor per input, shaped like the tensor it weights")
        dtype = weights.dtype
        out = torch.empty(tensors[0].shape, dtype=dtype)
        mean_coefficients = weights / safe_divisor(weights.sum())
        for part in chunks(out.numel()):
            stacked = torch.stack([flat_chunk(t, part, dtype) for t in tensors])
            fisher = torch.stack([flat_chunk(f, part, dtype) for f in fishers])
            weighted_fisher = stack_weights(weights, stacked) * fisher
            total = weighted_fisher.sum(dim=0)
            merged = (weighted_fisher * stacked).sum(dim=0) / torch.where(total == 0, torch.ones_like(total), total)
            fallback = (stacked * stack_weights(mean_coefficients, stacked)).sum(dim=0)
            out.view(-1)[part] = torch.where(total == 0, fallback, merged)
        return out
