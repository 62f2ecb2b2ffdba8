"""Linear merge: the weighted mean of the inputs (mergekit ``linear``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mashup.merging.base import MergeMethod, MergeParams, chunks, flat_chunk, safe_divisor


class AverageMerge(MergeMethod):
    """Σ w_i·x_i / Σ w_i (or Σ w_i·x_i without normalize); the reference is not used."""

    linear = True

    def resolve_normalize(self, normalize: bool | None) -> bool:
        return True if normalize is None else normalize

    def linear_coefficients(self, weights: Sequence[float], params: MergeParams) -> tuple[list[float], float]:
        total = sum(weights) if self.resolve_normalize(params.normalize) else 1.0
        total = 1.0 if abs(total) < 1e-8 else total
        return [w / total for w in weights], 0.0

    def merge(self, tensors: Sequence[torch.Tensor], weights: torch.Tensor, reference: torch.Tensor | None,
              params: MergeParams, generator: torch.Generator | None) -> torch.Tensor:
        coefficients = weights / safe_divisor(weights.sum()) if self.resolve_normalize(params.normalize) else weights
        out = torch.zeros(tensors[0].shape, dtype=weights.dtype)
        flat_out = out.view(-1)
        for part in chunks(out.numel()):
            for tensor, c in zip(tensors, coefficients):
                flat_out[part] += c * flat_chunk(tensor, part, weights.dtype)
        return out
