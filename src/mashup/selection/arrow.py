"""Arrow-style prototypes: each LoRA module's top right singular vector, matched to the target's inputs.

Following Ostapenko et al. (Arrow routing), a module's prototype is the top right singular vector v of
its update s * B @ A; inputs x that the update acts on strongly have a large |<x/|x|, v>|. The vector
comes from the small factors: with A^T = Q R, B @ A = (B R^T) Q^T, so the SVD of the out x r matrix
B R^T gives v = Q w. Prototypes depend only on the adapter, so they are cached by its weight digest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mashup.selection.factors import StackedFactors, stack_factors


def prototypes(tensors: Mapping[str, torch.Tensor], modules: Sequence[str]) -> dict[str, torch.Tensor]:
    """Unit top right singular vector of each module's B @ A (the scale does not change it)."""
    return {module: vectors[0] for module, vectors in prototypes_of(stack_factors([tensors], modules)).items()}


def prototypes_of(factors: StackedFactors) -> dict[str, torch.Tensor]:
    """``prototypes`` of stacked adapters, module -> [C, in], where the factors are: r x r problems only.

    R comes from the Cholesky factor of A A^T (= R^T R) and the top right singular vector of B R^T from
    the r x r eigenproblem of its Gram matrix, instead of a QR and an SVD per matrix: LAPACK's fixed
    cost per call, not the arithmetic, set the time of the many small factorisations, so every module's
    problems are solved in one batched call. Factors whose A A^T is singular take the QR route. An adapter
    whose problems are not finite or do not converge (factors that overflow float32) has no prototype: its
    rows are NaN (and so its affinity), and the others' come out as they would without it.
    """
    # the r x r Gram matrices in float32 (no float64 copy of the factors), everything after in float64
    gram_a = torch.stack([a @ a.transpose(1, 2) for a, _ in factors.values()]).double()  # [modules, C, r, r]
    gram_b = torch.stack([b.transpose(1, 2) @ b for _, b in factors.values()]).double()
    broken = ~(_finite(gram_a) & _finite(gram_b)).all(dim=0)  # [C]
    eye = torch.eye(gram_a.shape[-1], dtype=gram_a.dtype, device=gram_a.device)
    # identity placeholders for the broken adapters: one NaN would fail (or spoil) the whole batched call
    lower, info = torch.linalg.cholesky_ex(_masked(gram_a, broken, eye))  # A A^T = L L^T: R = L^T
    singular = info != 0
    lower = torch.where(singular[..., None, None], eye, lower)  # placeholders, replaced below
    matrices = lower.transpose(-1, -2) @ _masked(gram_b, broken, eye) @ lower
    try:
        _, eigenvectors = torch.linalg.eigh(matrices)  # ascending: the top one last
    except torch.linalg.LinAlgError:  # LAPACK gave up on one: solve each adapter's alone, without the failing
        eigenvectors, failed = _eigh_each(matrices)
        broken |= failed
    singular &= ~broken[None, :]
    w = torch.linalg.solve_triangular(lower.transpose(-1, -2), eigenvectors[..., -1:], upper=True).float()
    redo: dict[int, list[int]] = {}
    for k, i in torch.nonzero(singular).tolist():
        redo.setdefault(k, []).append(i)
    out = {}
    for k, (module, (a, b)) in enumerate(factors.items()):
        vectors = (a.transpose(1, 2) @ w[k]).squeeze(-1)  # Q w = A^T R^-1 w, [C, in]
        for i in redo.get(k, []):
            vectors[i] = _top_right_vector(a[i].double(), b[i].double()).float()
        vectors = vectors / vectors.norm(dim=1, keepdim=True)
        out[module] = vectors.masked_fill(broken[:, None], torch.nan)
    return out


def _finite(grams: torch.Tensor) -> torch.Tensor:
    """[modules, C]: whether each adapter's module Gram matrix is finite."""
    return grams.isfinite().flatten(2).all(dim=2)


def _masked(grams: torch.Tensor, broken: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
    return torch.where(broken[None, :, None, None], eye, grams)


def _eigh_each(matrices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``eigh``'s eigenvectors of each adapter's problems (``matrices``: [modules, C, r, r]) solved apart, and
    [C]: whose LAPACK could not solve (identity placeholders)."""
    failed = torch.zeros(matrices.shape[1], dtype=torch.bool, device=matrices.device)
    vectors = []
    for c in range(matrices.shape[1]):
        try:
            vectors.append(torch.linalg.eigh(matrices[:, c])[1])
        except torch.linalg.LinAlgError:
            failed[c] = True
            vectors.append(torch.eye(matrices.shape[-1], dtype=matrices.dtype,
                                     device=matrices.device).expand_as(matrices[:, c]))
    return torch.stack(vectors, dim=1), failed


def _top_right_vector(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The top right singular vector of B @ A by QR and SVD, for an A whose rows are dependent."""
    q, r = torch.linalg.qr(a.T)  # a.T: [in, r]
    _, _, vh = torch.linalg.svd(b @ r.T, full_matrices=False)
    return q @ vh[0]


Layout = Sequence[tuple[str, int]]  # (module, in_features) in the order a prototype row holds them


def unit_inputs(inputs: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The probe's input rows scaled to unit length in float32 on ``device``: made once per target, matched
    against every block of prototype rows (``affinity``)."""
    units = {}
    for module, x in inputs.items():
        x = x.to(device, torch.float32)
        units[module] = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return units


def affinity(units: Mapping[str, torch.Tensor], prototypes: torch.Tensor, layout: Layout) -> list[float]:
    """Mean over modules and input rows of |<x/|x|, v>| for each candidate (higher: more relevant), where
    ``units`` holds each module's x/|x| (``unit_inputs``).

    ``prototypes`` holds one row per candidate: its modules' unit vectors back to back in ``layout`` order, in
    any float dtype (the cache keeps float16), on the device the products run on. One row per candidate, not
    a tensor per module: a thousand candidates' 210 SmolLM2 modules as separate tensors cost more to gather
    than the products themselves.
    """
    device = prototypes.device
    totals = torch.zeros(len(prototypes), dtype=torch.float64, device=device)
    for (module, _), block in zip(layout, prototypes.split([size for _, size in layout], dim=1)):
        totals += (units[module] @ block.T.float()).abs().mean(dim=0).double()
    return (totals / len(layout)).tolist()
