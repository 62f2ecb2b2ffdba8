"""First-order estimate of each LoRA's loss change on the target, from one gradient of the base.

With G = dL/dW for a targeted weight W, a LoRA update s * B @ A changes the loss by about
<G, s B A> = s * tr(G^T B A) = s * sum((B^T G) * A): an r x in product per module, so no dense
delta-W is built and the gradient is computed once for the whole library.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mashup.selection.slots import adapter_factors


def predicted_change(gradients: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor],
                     scale: float) -> float:
    """Predicted loss change of one adapter (lower: more helpful on the target)."""
    total = torch.zeros((), dtype=torch.float64)
    for module, grad in gradients.items():
        a, b = adapter_factors(tensors, module)
        total += ((b.float().T @ grad) * a.float()).sum(dtype=torch.float64)
    return float(scale * total)
