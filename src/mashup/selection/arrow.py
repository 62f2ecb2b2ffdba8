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
    return prototypes_of([tensors], modules)[0]


def prototypes_of(adapters: Sequence[Mapping[str, torch.Tensor]], modules: Sequence[str]
                  ) -> list[dict[str, torch.Tensor]]:
    """``prototypes`` of several adapters of one layout, batched over them: r x r problems only.

    R comes from the Cholesky factor of A A^T (= R^T R) and the top right singular vector of B R^T from
    the r x r eigenproblem of its Gram matrix, instead of a QR and an SVD per matrix: LAPACK's fixed
    cost per call, not the arithmetic, set the time of the many small factorisations. Factors whose
    A A^T is singular take the QR route.
    """
    out: list[dict[str, torch.Tensor]] = [{} for _ in adapters]
    for module in modules:
        factors = [adapter_factors(tensors, module) for tensors in adapters]
        a = torch.stack([a.float() for a, _ in factors])  # [C, r, in]
        b = torch.stack([b.float() for _, b in factors])  # [C, out, r]
        # the r x r Gram matrices in float32 (no float64 copy of the factors), everything after in float64
        lower, info = torch.linalg.cholesky_ex((a @ a.transpose(1, 2)).double())  # A A^T = L L^T: R = L^T
        failed = torch.nonzero(info).flatten().tolist()
        lower[failed] = torch.eye(lower.shape[-1], dtype=lower.dtype)  # placeholders, replaced below
        gram = lower.transpose(1, 2) @ (b.transpose(1, 2) @ b).double() @ lower  # of B R^T
        _, eigenvectors = torch.linalg.eigh(gram)  # ascending: the top one is last
        w = torch.linalg.solve_triangular(lower.transpose(1, 2), eigenvectors[:, :, -1:], upper=True)
        vectors = (a.transpose(1, 2) @ w.float()).squeeze(-1)  # Q w = A^T R^-1 w, [C, in]
        for i in failed:
            vectors[i] = _top_right_vector(a[i].double(), b[i].double()).float()
        vectors = vectors / vectors.norm(dim=1, keepdim=True)
        for protos, vector in zip(out, vectors):
            protos[module] = vector.clone()  # its own storage: the signal cache saves each one
    return out


def _top_right_vector(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The top right singular vector of B @ A by QR and SVD, for an A whose rows are dependent."""
    q, r = torch.linalg.qr(a.T)  # a.T: [in, r]
    _, _, vh = torch.linalg.svd(b @ r.T, full_matrices=False)
    return q @ vh[0]


def affinity(inputs: Mapping[str, torch.Tensor], candidates: Sequence[Mapping[str, torch.Tensor]]) -> list[float]:
    """Mean over modules and input rows of |<x/|x|, v>| for each candidate's prototypes (higher: more relevant)."""
    totals = torch.zeros(len(candidates), dtype=torch.float64)
    for module, x in inputs.items():
        unit = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        stacked = torch.stack([c[module] for c in candidates], dim=1)  # [in, C]
        totals += (unit @ stacked).abs().mean(dim=0).double()
    return (totals / len(inputs)).tolist()
