"""Which of our settings reproduce PEFT's merge_utils and mergekit's merges exactly."""

from __future__ import annotations

import pytest
import torch
from peft.utils import merge_utils

from mashup.merging import MergeParams, merge_tensors


def deltas(k: int = 3, shape: tuple[int, ...] = (16, 12)) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(42)
    return [torch.randn(shape, generator=generator) for _ in range(k)]


def test_task_arithmetic_matches_peft() -> None:
    xs, w = deltas(), [0.3, 1.0, 2.0]
    expected = merge_utils.task_arithmetic(xs, torch.tensor(w))
    assert torch.allclose(merge_tensors("task_arithmetic", xs, w), expected, atol=1e-6)


@pytest.mark.parametrize(("sign", "peft_sign"), [("mass", "total"), ("count", "frequency")])
def test_ties_with_unit_weights_matches_peft(sign: str, peft_sign: str) -> None:
    # PEFT elects on unweighted deltas and divides by the agreeing count: identical to ours when all w = 1.
    xs = deltas()
    expected = merge_utils.ties(xs, torch.ones(3), density=0.4, majority_sign_method=peft_sign)
    params = MergeParams(density=0.4, sign=sign)  # type: ignore[arg-type]
    ours = merge_tensors("ties", xs, [1.0, 1.0, 1.0], None, params)
    assert torch.allclose(ours, expected, atol=1e-6)


def test_ties_with_other_weights_differs_from_peft_by_design() -> None:
    xs = deltas()
    expected = merge_utils.ties(xs, torch.tensor([0.2, 1.0, 3.0]), density=0.4)
    ours = merge_tensors("ties", xs, [0.2, 1.0, 3.0], None, MergeParams(density=0.4))
    assert not torch.allclose(ours, expected, atol=1e-3)


def test_magnitude_prune_matches_peft() -> None:
    xs, w = deltas(), [0.5, 1.5, -1.0]
    expected = merge_utils.magnitude_prune(xs, torch.tensor(w), density=0.3)
    assert torch.allclose(merge_tensors("magnitude_prune", xs, w, None, MergeParams(density=0.3)), expected, atol=1e-6)


def test_dare_linear_matches_peft_with_the_same_seed() -> None:
    xs, w = deltas(), [0.5, 1.5, 1.0]
    torch.manual_seed(3)
    expected = merge_utils.dare_linear(xs, torch.tensor(w), density=0.6)
    ours = merge_tensors("dare_linear", xs, w, None, MergeParams(density=0.6), torch.Generator().manual_seed(3))
    assert torch.allclose(ours, expected, atol=1e-6)


def test_dare_ties_with_unit_weights_and_normalize_matches_peft() -> None:
    xs = deltas()
    torch.manual_seed(5)
    expected = merge_utils.dare_ties(xs, torch.ones(3), density=0.6)
    ours = merge_tensors("dare_ties", xs, [1.0] * 3, None, MergeParams(density=0.6, normalize=True),
                         torch.Generator().manual_seed(5))
    assert torch.allclose(ours, expected, atol=1e-6)


def _mergekit_gta(name: str, base: torch.Tensor, xs: list[torch.Tensor], weights: list[float], density: float,
                  **shared: object) -> torch.Tensor:
    # mergekit is in the test extra, so a missing install fails here rather than skipping silently.
    try:
        from mergekit.merge_methods import generalized_task_arithmetic as gta
    except ImportError as exc:
        pytest.fail(f"mergekit is not installed ({exc}); `make install` installs the test extra")
    from mergekit.merge_methods.base import TensorGroup
    from mergekit.merge_methods.registry import get

    method = get(name)
    assert isinstance(method, gta.GeneralizedTaskArithmeticMerge)
    group = TensorGroup.from_tensors([base, *xs], base_index=0)
    ids = range(1, len(xs) + 1)
    parameters = {"weight": dict(zip(ids, weights)), "density": {i: density for i in ids}, "int8_mask": False,
                  "lambda": 1.0, "normalize": method.default_normalize, "rescale": method.default_rescale}
    parameters.update(shared)
    return method.merge_group(group, **parameters)


@pytest.mark.parametrize("name", ["task_arithmetic", "ties"])
def test_defaults_match_mergekit(name: str) -> None:
    base = torch.randn(16, 12, generator=torch.Generator().manual_seed(1))
    xs = [base + d for d in deltas()]
    weights = [0.7, 1.3, 0.5]
    expected = _mergekit_gta(name, base, xs, weights, 0.4)
    ours = merge_tensors(name, xs, weights, base, MergeParams(density=0.4))
    assert torch.allclose(ours, expected, atol=1e-5)


def test_dare_ties_matches_mergekit_up_to_the_rescale_rule() -> None:
    # mergekit rescales DARE survivors to the L1 norm; without rescale the mask and consensus are ours,
    # so our task vector equals mergekit's (rescale off) divided by the density.
    base = torch.zeros(16, 12)
    xs, weights = deltas(), [0.7, 1.3, 0.5]
    torch.manual_seed(9)
    expected = _mergekit_gta("dare_ties", base, xs, weights, 0.5, rescale=False)
    ours = merge_tensors("dare_ties", xs, weights, base, MergeParams(density=0.5), torch.Generator().manual_seed(9))
    assert torch.allclose(ours * 0.5, expected, atol=1e-6)

