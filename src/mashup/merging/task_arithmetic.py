"""The task-arithmetic family: task_arithmetic, ties, dare_linear, dare_ties, magnitude_prune.

One class, parametrised like mergekit's ``GeneralizedTaskArithmeticMerge``: deltas to the
reference are sparsified (none, magnitude top-k, or DARE random drop), weighted, optionally
filtered by sign consensus, summed, optionally normalised, scaled by lambda, added back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from mashup.config import SignRule
from mashup.merging.base import MergeMethod, MergeParams, chunks, flat_chunk, safe_divisor

Sparsify = Literal["none", "magnitude", "random"]


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep exactly k = max(1, int(density·numel)) entries of largest magnitude (ties: lowest index wins)."""
    magnitude = delta.abs().reshape(-1)
    k = max(1, int(density * magnitude.numel()))
    if k >= magnitude.numel():
        return torch.ones(delta.shape, dtype=torch.bool)
    # kthvalue is linear time, unlike a full sort; entries tied at the threshold are filled by index.
    threshold = torch.kthvalue(magnitude, magnitude.numel() - k + 1).values
    mask = magnitude > threshold
    missing = k - int(mask.sum())
    if missing > 0:
        mask[(magnitude == threshold).nonzero().reshape(-1)[:missing]] = True
    return mask.reshape(delta.shape)


def keep_mask(delta: torch.Tensor, density: float, method: Sparsify,
              generator: torch.Generator | None) -> tuple[torch.Tensor | None, float]:
    """(mask of kept entries or None for all, factor for the survivors); DARE rescales by 1/density."""
    if method == "none" or density >= 1.0:
        return None, 1.0
    if method == "magnitude":
        return magnitude_mask(delta, density), 1.0
    return torch.bernoulli(torch.full_like(delta, density), generator=generator).bool(), 1.0 / density


def sparsify(delta: torch.Tensor, density: float, method: Sparsify, generator: torch.Generator | None) -> torch.Tensor:
    """The task vector with dropped entries zeroed (and DARE's survivors rescaled)."""
    mask, factor = keep_mask(delta, density, method, generator)
    return delta if mask is None else delta * mask * factor


def agreement(weighted: Sequence[torch.Tensor], rule: SignRule) -> list[torch.Tensor]:
    """Per input, where its weighted delta has the elected sign (elected on the weighted deltas, a zero
    total counts as +); exact zeros never agree."""
    total = sum(weighted) if rule == "mass" else sum(torch.sign(x) for x in weighted)
    positive = torch.as_tensor(total) >= 0
    return [torch.where(positive, x > 0, x < 0) for x in weighted]


class TaskArithmeticMerge(MergeMethod):
    """reference + λ·mix(w_i·sparsify(x_i − reference)); see the module docstring."""

    uses_reference = True
    uses_lambda = True

    def __init__(self, name: str, *, sparsify: Sparsify = "none", consensus: bool = False,
                 default_normalize: bool = False, default_density: float | None = None) -> None:
        super().__init__(name)
        self.sparsify = sparsify
        self.consensus = consensus
        self.default_normalize = default_normalize
        self.uses_density = sparsify != "none"
        self.default_density = default_density if self.uses_density else None
        self.linear = not self.uses_density and not consensus

    def default_weights(self, k: int) -> list[float]:
        return [1.0] * k

    def resolve_normalize(self, normalize: bool | None) -> bool:
        return self.default_normalize if normalize is None else normalize

    def linear_coefficients(self, weights: Sequence[float], params: MergeParams) -> tuple[list[float], float] | None:
        if not self.linear:
            return None
        total = sum(weights) if self.resolve_normalize(params.normalize) else 1.0
        total = 1.0 if abs(total) < 1e-8 else total
        coefficients = [params.lambda_ * w / total for w in weights]
        return coefficients, 1.0 - sum(coefficients)

    def merge(self, tensors: Sequence[torch.Tensor], weights: torch.Tensor, reference: torch.Tensor | None,
              params: MergeParams, generator: torch.Generator | None) -> torch.Tensor:
        dtype = weights.dtype
        base = torch.zeros(tensors[0].shape, dtype=dtype) if reference is None else reference.to(dtype)
        density = self.resolve_density(params.density)
        sparse = self.sparsify != "none" and density < 1.0
        masks = [keep_mask(t.to(dtype) - base, density, self.sparsify, generator) if sparse else (None, 1.0)
                 for t in tensors]
        out = torch.empty_like(base)
        for part in chunks(out.numel()):
            ref = base.reshape(-1)[part]
            deltas = [self._delta(t, m, part, ref) for t, m in zip(tensors, masks)]
            out.view(-1)[part] = ref + params.lambda_ * self._mix(deltas, weights, params)
        return out

    @staticmethod
    def _delta(tensor: torch.Tensor, mask: tuple[torch.Tensor | None, float], part: slice,
               ref: torch.Tensor) -> torch.Tensor:
        delta = flat_chunk(tensor, part, ref.dtype) - ref
        keep, factor = mask
        if keep is None:
            return delta
        delta = torch.where(keep.reshape(-1)[part], delta, 0.0)
        return delta if factor == 1.0 else delta * factor

    def _mix(self, deltas: Sequence[torch.Tensor], weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
        """Σ w_i·δ_i over agreeing entries (with consensus), divided by the weight mass when normalising.

        Loops over inputs instead of stacking: reductions over a short leading axis are slow on CPU.
        """
        weighted = [w * d for w, d in zip(weights, deltas)]
        if not self.consensus:
            mixed = torch.stack(weighted).sum(dim=0) if len(weighted) > 8 else sum(weighted)
            divisor: torch.Tensor = safe_divisor(weights.sum())
        else:
            mixed, divisor = torch.zeros_like(deltas[0]), torch.zeros_like(deltas[0])
            for w, x, agree in zip(weights, weighted, agreement(weighted, params.sign)):
                mixed += torch.where(agree, x, 0.0)
                divisor += agree * w
            divisor = torch.where(divisor == 0, 1.0, divisor)
        mixed = torch.as_tensor(mixed)
        return mixed / divisor if self.resolve_normalize(params.normalize) else mixed
