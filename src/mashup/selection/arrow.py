"""Arrow-style prototypes: each LoRA module's top right singular vector, matched to the target's inputs.

Following Ostapenko et al. (Arrow routing), a module's prototype is the top right singular vector v of
its update s * B @ A; inputs x that the update acts on strongly have a large |<x/|x|, v>|. The vector
comes from the small factors: with A^T = Q R, B @ A = (B R^T) Q^T, so the SVD of the out x r matrix
B R^T gives v = Q w. Prototypes depend only on the adapter, so they are cached by its weight digest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mashup.selection.slots import adapter_factors


def prototypes(tensors: Mapping[str, torch.Tensor], modules: Sequence[str]) -> dict[str, torch.Tensor]:
    """Unit top right singular vector of each module's B @ A (the scale does not change it)."""
    out = {}
    for module in modules:
        a, b = (t.double() for t in adapter_factors(tensors, module))
        q, r = torch.linalg.qr(a.T)  # a.T: [in, r]
        _, _, vh = torch.linalg.svd(b @ r.T, full_matrices=False)
        out[module] = (q @ vh[0]).float()
    return out


def affinity(inputs: Mapping[str, torch.Tensor], candidates: Sequence[Mapping[str, torch.Tensor]]) -> list[float]:
    """Mean over modules and input rows of |<x/|x|, v>| for each candidate's prototypes (higher: more relevant)."""
    totals = torch.zeros(len(candidates), dtype=torch.float64)
    for module, x in inputs.items():
        unit = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        stacked = torch.stack([c[module] for c in candidates], dim=1)  # [in, C]
        totals += (unit @ stacked).abs().mean(dim=0).double()
    return (totals / len(inputs)).tolist()
