"""First-order estimate of each LoRA's loss change on the target, from one gradient of the base.

With G = dL/dW for a targeted weight W, a LoRA update s * B @ A changes the loss by about
<G, s B A> = s * tr(G^T B A) = s * sum((B^T G) * A): an r x in product per module, so no dense
delta-W is built and the gradient is computed once for the whole library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mashup.selection.factors import StackedFactors, stack_factors


def predicted_change(gradients: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor],
                     scale: float) -> float:
    """Predicted loss change of one adapter (lower: more helpful on the target)."""
    return predicted_changes(gradients, stack_factors([tensors], list(gradients)), [scale])[0]


def predicted_changes(gradients: Mapping[str, torch.Tensor], factors: StackedFactors,
                      scales: Sequence[float]) -> list[float]:
    """``predicted_change`` of each of several stacked adapters, computed where the gradients are.

    B^T G has r rows per adapter, so one adapter's product is bound by reading G (hundreds of MB for a
    135M model); stacking the adapters' B^T reads each G once for all of them.
    """
    device = next(iter(gradients.values())).device
    totals = torch.zeros(len(scales), dtype=torch.float64, device=device)
    for module, grad in gradients.items():
        a, b = (f.to(device, grad.dtype) for f in factors[module])
        # one [C * r, out] @ G product: a batched [r, out] @ G per adapter would read G C times (1.7x slower)
        b_t = b.transpose(1, 2).reshape(-1, b.shape[1])
        totals += ((b_t @ grad).view_as(a) * a).sum(dim=(1, 2), dtype=torch.float64)
    return (totals.cpu() * torch.tensor(scales, dtype=torch.float64)).tolist()
