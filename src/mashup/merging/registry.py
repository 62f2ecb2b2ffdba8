"""The one registry of merge methods, and the tensor-level entry point ``merge_tensors``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mashup.errors import MergeError
from mashup.merging.average import AverageMerge
from mashup.merging.base import MergeMethod, MergeParams
from mashup.merging.fisher import FisherMerge
from mashup.merging.regmean import RegMeanMerge
from mashup.merging.task_arithmetic import TaskArithmeticMerge

_REGISTRY: dict[str, tuple[type[MergeMethod], dict[str, Any]]] = {}


def register_merge_method(name: str, cls: type[MergeMethod], **options: Any) -> None:
    """Register ``cls(name, **options)`` under ``name``; a name can be registered once."""
    if name in _REGISTRY:
        raise MergeError(f"merge method '{name}' is already registered")
    _REGISTRY[name] = (cls, dict(options))


def merge_method_names() -> list[str]:
    return sorted(_REGISTRY)


def get_merge_method(name: str) -> MergeMethod:
    """A fresh instance of the named method; unknown names list the valid ones."""
    if name not in _REGISTRY:
        raise MergeError(f"unknown merge method '{name}'", None, f"use one of: {', '.join(merge_method_names())}")
    cls, options = _REGISTRY[name]
    return cls(name, **options)


def merge_tensors(method: str | MergeMethod, tensors: Sequence[torch.Tensor], weights: Sequence[float],
                  reference: torch.Tensor | None = None, params: MergeParams | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Merge k same-shape tensors with a method; computed in float32 (float64 stays), returned in the input dtype."""
    merger = get_merge_method(method) if isinstance(method, str) else method
    if not tensors:
        raise MergeError("nothing to merge: no input tensors")
    if len(weights) != len(tensors):
        raise MergeError(f"{len(weights)} weights for {len(tensors)} tensors")
    shape, dtype = tensors[0].shape, tensors[0].dtype
    if any(t.shape != shape for t in tensors) or (reference is not None and reference.shape != shape):
        raise MergeError(f"tensor shapes differ: {[tuple(t.shape) for t in tensors]}")
    params = params or MergeParams()
    if params.density is not None and not 0.0 < params.density <= 1.0:
        raise MergeError(f"density must be in (0, 1] (the fraction kept), got {params.density}",
                         f"merge_tensors ({merger.name})", "give the fraction to keep, above 0 and at most 1")
    work = torch.float64 if dtype == torch.float64 else torch.float32
    merged = merger.merge(list(tensors), torch.tensor(list(weights), dtype=work), reference, params, generator)
    return merged.to(dtype)


# Default densities (fraction kept). mergekit's code default is 1.0, which keeps everything; these follow
# the TIES paper (keep the top 20%, k = 20) and PEFT's model-merging guide (density=0.2 for ties and
# dare_ties). docs/merging.md lists the sources.
TIES_DENSITY = 0.2
DARE_DENSITY = 0.2


def _register_builtin() -> None:
    register_merge_method("average", AverageMerge)
    register_merge_method("task_arithmetic", TaskArithmeticMerge)
    register_merge_method("ties", TaskArithmeticMerge, sparsify="magnitude", consensus=True, default_normalize=True,
                          default_density=TIES_DENSITY)
    register_merge_method("dare_linear", TaskArithmeticMerge, sparsify="random", default_density=DARE_DENSITY)
    register_merge_method("dare_ties", TaskArithmeticMerge, sparsify="random", consensus=True,
                          default_density=DARE_DENSITY)
    register_merge_method("magnitude_prune", TaskArithmeticMerge, sparsify="magnitude", default_density=TIES_DENSITY)
    register_merge_method("fisher", FisherMerge)
    register_merge_method("regmean", RegMeanMerge)


_register_builtin()
