"""The interface every merge method implements, and the parameters it receives."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from mashup.config import SignRule
from mashup.errors import MergeError

Statistic = Literal["fisher", "gram"]
REGMEAN_ALPHA = 0.9  # RegMean paper: off-diagonal Gram entries scaled by alpha
CHUNK_ELEMENTS = 1 << 20  # elementwise merges run over flat chunks so temporaries stay small


@dataclass(frozen=True)
class MergeParams:
    """Method settings for one tensor; ``statistics`` holds one tensor per input (Fisher or Gram) or None.

    ``density`` None means the method's own default (``MergeMethod.default_density``). ``transposed``: the
    tensor is a weight stored (in, out), as transformers' Conv1D stores it (RegMean solves for it as stored).
    """

    density: float | None = None
    lambda_: float = 1.0
    normalize: bool | None = None
    sign: SignRule = "mass"
    statistics: Sequence[torch.Tensor] | None = None
    regmean_alpha: float = REGMEAN_ALPHA
    transposed: bool = False


class MergeMethod(ABC):
    """One way of combining k tensors of the same shape into one.

    Class attributes say what the method needs so callers can prepare it: a reference
    (task vectors), per-checkpoint statistics, a density (and its default), and whether the
    result is linear in the inputs (which makes LoRA ``concat`` and factor-space ``ab`` merges
    well defined).
    """

    uses_reference: ClassVar[bool] = False
    statistic: ClassVar[Statistic | None] = None
    uses_density: bool = False
    default_density: float | None = None
    linear: bool = False
    uses_lambda: ClassVar[bool] = False

    def __init__(self, name: str) -> None:
        self.name = name

    def resolve_density(self, density: float | None) -> float:
        """The density actually used: the given one, else the method's default (1.0: keep all)."""
        if density is not None:
            return density
        return self.default_density if self.default_density is not None else 1.0

    def default_weights(self, k: int) -> list[float]:
        return [1.0 / k] * k

    def resolve_normalize(self, normalize: bool | None) -> bool | None:
        """The normalize setting actually used (None: the method has no such setting)."""
        return None

    def linear_coefficients(self, weights: Sequence[float], params: MergeParams) -> tuple[list[float], float] | None:
        """(c_i, c_ref) when the merge equals c_ref·reference + Σ c_i·x_i exactly, else None."""
        return None

    @abstractmethod
    def merge(self, tensors: Sequence[torch.Tensor], weights: torch.Tensor, reference: torch.Tensor | None,
              params: MergeParams, generator: torch.Generator | None) -> torch.Tensor:
        """Merge same-shape tensors (any float dtype); compute in ``weights.dtype`` and return in it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def stack_weights(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a length-k weight vector to broadcast against a (k, *shape) stack."""
    return weights.reshape(weights.shape + (1,) * (like.dim() - 1))


def safe_divisor(divisor: torch.Tensor, tolerance: float = 1e-8) -> torch.Tensor:
    """Replace (near-)zero divisors by 1, as mergekit does, instead of dividing by zero."""
    return torch.where(divisor.abs() < tolerance, torch.ones_like(divisor), divisor)


def require_statistics(params: MergeParams, k: int, method: str) -> Sequence[torch.Tensor]:
    if params.statistics is None or len(params.statistics) != k:
        raise MergeError(f"{method} needs one statistics tensor per input", None,
                         "pass calibration_batches so they can be estimated")
    return params.statistics


def chunks(numel: int, size: int = CHUNK_ELEMENTS) -> Iterator[slice]:
    """Slices covering range(numel) in pieces of ``size`` elements."""
    for start in range(0, max(numel, 1), size):
        yield slice(start, min(start + size, numel))


def flat_chunk(tensor: torch.Tensor, part: slice, dtype: torch.dtype) -> torch.Tensor:
    return tensor.reshape(-1)[part].to(dtype)
