"""First-order estimate of each LoRA's loss change on the target, from one gradient of the base.

With G = dL/dW for a targeted weight W, a LoRA update s * B @ A changes the loss by about
<G, s B A> = s * tr(G^T B A) = s * sum((B^T G) * A): an r x in product per module, so no dense
delta-W is built and the gradient is computed once for the whole library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mashup.selection.slots import adapter_factors


def predicted_change(gradients: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor],
                     scale: float) -> float:
    """Predicted loss change of one adapter (lower: more helpful on the target)."""
    return predicted_changes(gradients, [tensors], [scale])[0]


def predicted_changes(gradients: Mapping[str, torch.Tensor], adapters: Sequence[Mapping[str, torch.Tensor]],
                      scales: Sequence[float]) -> list[float]:
    """``predicted_change`` of several adapters of one layout, computed where the gradients are.

    B^T G has r rows per adapter, so one adapter's product is bound by reading G (hundreds of MB for a
    135M model); stacking the adapters' B^T reads each G once for all of them.
    """
    device = next(iter(gradients.values())).device
    totals = torch.zeros(len(adapters), dtype=torch.float64, device=device)
    for module, grad in gradients.items():
        factors = [adapter_factors(tensors, module) for tensors in adapters]
        a = torch.stack([a.to(grad.dtype) for a, _ in factors]).to(device)  # [C, r, in]
        b_t = torch.cat([b.T.to(grad.dtype) for _, b in factors]).to(device)  # [C * r, out]
        totals += ((b_t @ grad).view_as(a) * a).sum(dim=(1, 2), dtype=torch.float64)
    return (totals.cpu() * torch.tensor(scales, dtype=torch.float64)).tolist()
