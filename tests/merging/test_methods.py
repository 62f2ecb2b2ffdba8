"""Each method on small hand-built tensors with known answers, and the registry."""

from __future__ import annotations

import pytest
import torch

from mashup.errors import MergeError
from mashup.merging import MergeParams, get_merge_method, merge_method_names, merge_tensors, register_merge_method
from mashup.merging.average import AverageMerge
from mashup.merging.task_arithmetic import magnitude_mask

T = torch.tensor


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry_lists_rejects_duplicates_and_unknown_names() -> None:
    assert {"average", "task_arithmetic", "ties", "dare_linear", "dare_ties", "magnitude_prune", "fisher",
            "regmean"} <= set(merge_method_names())
    with pytest.raises(MergeError, match="already registered"):
        register_merge_method("average", AverageMerge)
    with pytest.raises(MergeError, match="ties") as info:
        get_merge_method("tie")
    assert "unknown merge method 'tie'" in str(info.value)


def test_average_is_weighted_mean_and_sum_without_normalize() -> None:
    x1, x2 = T([1.0, 2.0]), T([5.0, -2.0])
    assert torch.allclose(merge_tensors("average", [x1, x2], [1.0, 3.0]), T([4.0, -1.0]))
    raw = merge_tensors("average", [x1, x2], [1.0, 3.0], params=MergeParams(normalize=False))
    assert torch.allclose(raw, T([16.0, -4.0]))


def test_average_keeps_input_dtype() -> None:
    x = [torch.ones(3, dtype=torch.bfloat16), 3 * torch.ones(3, dtype=torch.bfloat16)]
    out = merge_tensors("average", x, [0.5, 0.5])
    assert out.dtype == torch.bfloat16 and torch.equal(out, 2 * torch.ones(3, dtype=torch.bfloat16))


def test_task_arithmetic_adds_scaled_weighted_deltas() -> None:
    ref, x1, x2 = T([1.0, 1.0]), T([2.0, 0.0]), T([4.0, 1.0])
    out = merge_tensors("task_arithmetic", [x1, x2], [1.0, 0.5], ref, MergeParams(lambda_=2.0))
    assert torch.allclose(out, ref + 2.0 * (T([1.0, -1.0]) + 0.5 * T([3.0, 0.0])))
    normalized = merge_tensors("task_arithmetic", [x1, x2], [1.0, 0.5], ref, MergeParams(normalize=True))
    assert torch.allclose(normalized, ref + (T([1.0, -1.0]) + 0.5 * T([3.0, 0.0])) / 1.5)


def test_ties_with_all_same_signs_is_the_disjoint_weighted_mean() -> None:
    ref = torch.zeros(5)
    xs = [T([1.0, 2.0, 3.0, 4.0, 5.0]), T([3.0, 2.0, 1.0, 0.5, 5.0])]
    out = merge_tensors("ties", xs, [1.0, 3.0], ref, MergeParams(density=1.0))
    assert torch.allclose(out, (xs[0] + 3.0 * xs[1]) / 4.0)


# Columns: both positive | total 0 (counts as +) | all exact zeros | mass + but count −
TIES_INPUTS = [T([1.0, -2.0, 0.0, 3.0]), T([2.0, 1.0, 0.0, -1.0]), T([-1.0, 1.0, 0.0, -1.0])]


def test_ties_sign_by_mass_zero_total_and_exact_zeros() -> None:
    out = merge_tensors("ties", TIES_INPUTS, [1.0, 1.0, 1.0], torch.zeros(4), MergeParams(density=1.0))
    assert torch.equal(out, T([1.5, 1.0, 0.0, 3.0]))


def test_ties_sign_by_count_differs_from_mass() -> None:
    out = merge_tensors("ties", TIES_INPUTS, [1.0, 1.0, 1.0], torch.zeros(4), MergeParams(density=1.0, sign="count"))
    assert torch.equal(out, T([1.5, 1.0, 0.0, -1.0]))


def test_ties_elects_sign_on_weighted_deltas() -> None:
    # unweighted: 2 − 1 > 0 elects +; weighted: 2 − 3·1 < 0 elects −, so only the second survives.
    out = merge_tensors("ties", [T([2.0]), T([-1.0])], [1.0, 3.0], torch.zeros(1), MergeParams(density=1.0))
    assert torch.equal(out, T([-1.0]))


def test_ties_trims_each_delta_before_electing() -> None:
    ref = T([10.0, 10.0, 10.0, 10.0])
    x1 = ref + T([4.0, -0.1, 0.2, -3.0])  # keeps 4 and −3 at density 0.5
    x2 = ref + T([-1.0, 5.0, 0.1, -2.0])  # keeps 5 and −2
    out = merge_tensors("ties", [x1, x2], [1.0, 1.0], ref, MergeParams(density=0.5))
    assert torch.allclose(out, ref + T([4.0, 5.0, 0.0, -2.5]))


def test_magnitude_mask_keeps_exactly_k_even_with_ties() -> None:
    delta = T([1.0, -1.0, 1.0, 1.0, -1.0, 0.5, 1.0, 1.0, -1.0, 1.0])
    mask = magnitude_mask(delta, 0.35)
    assert int(mask.sum()) == 3 and mask[:3].all()
    out = merge_tensors("magnitude_prune", [delta], [1.0], None, MergeParams(density=0.35))
    assert int(out.count_nonzero()) == 3


def test_magnitude_prune_keeps_the_top_k_of_a_random_tensor() -> None:
    delta = torch.randn(13, 7, generator=gen(1))
    out = merge_tensors("magnitude_prune", [delta], [1.0], torch.zeros(13, 7), MergeParams(density=0.2))
    k = int(0.2 * delta.numel())
    assert int(out.count_nonzero()) == k
    assert out.abs().min().item() == 0.0
    threshold = delta.abs().flatten().topk(k).values[-1]
    assert torch.equal(out != 0, delta.abs() >= threshold)


def test_dare_at_density_one_equals_task_arithmetic() -> None:
    ref = torch.randn(6, 4, generator=gen(2))
    xs = [ref + torch.randn(6, 4, generator=gen(3 + i)) for i in range(3)]
    everything = MergeParams(density=1.0)
    ta = merge_tensors("task_arithmetic", xs, [0.5, 1.0, 2.0], ref)
    assert torch.equal(merge_tensors("dare_linear", xs, [0.5, 1.0, 2.0], ref, everything, gen()), ta)
    ties = merge_tensors("ties", xs, [0.5, 1.0, 2.0], ref, MergeParams(density=1.0, normalize=False))
    assert torch.equal(merge_tensors("dare_ties", xs, [0.5, 1.0, 2.0], ref, everything, gen()), ties)


def test_dare_keeps_the_expectation_over_seeds() -> None:
    ref = torch.zeros(8)
    xs = [T([1.0, -2.0, 3.0, 0.5, 1.0, 2.0, -1.0, 4.0]), T([2.0, 1.0, -1.0, 0.5, 3.0, -2.0, 1.0, 1.0])]
    params = MergeParams(density=0.4)
    samples = torch.stack([merge_tensors("dare_linear", xs, [1.0, 0.5], ref, params, gen(s)) for s in range(3000)])
    expected = xs[0] + 0.5 * xs[1]
    assert torch.allclose(samples.mean(0), expected, atol=0.15)
    assert (samples == 0).float().mean() > 0.2  # entries really were dropped


def test_dare_is_reproducible_per_seed() -> None:
    xs = [torch.randn(5, 5, generator=gen(i)) for i in range(2)]
    params = MergeParams(density=0.5)
    first = merge_tensors("dare_ties", xs, [1.0, 1.0], None, params, gen(7))
    assert torch.equal(first, merge_tensors("dare_ties", xs, [1.0, 1.0], None, params, gen(7)))
    assert not torch.equal(first, merge_tensors("dare_ties", xs, [1.0, 1.0], None, params, gen(8)))


def test_fisher_weights_each_entry_and_falls_back_to_the_mean() -> None:
    xs = [T([0.0, 0.0, 2.0]), T([4.0, 4.0, 6.0])]
    fishers = [T([1.0, 0.0, 0.0]), T([3.0, 1.0, 0.0])]
    out = merge_tensors("fisher", xs, [0.5, 0.5], params=MergeParams(statistics=fishers))
    assert torch.allclose(out, T([3.0, 4.0, 4.0]))
    with pytest.raises(MergeError, match="statistics"):
        merge_tensors("fisher", xs, [0.5, 0.5])


def test_regmean_solves_the_least_squares_problem_at_alpha_one() -> None:
    xs_in = [torch.randn(20, 5, generator=gen(i)) for i in range(2)]
    ws = [torch.randn(3, 5, generator=gen(10 + i)) for i in range(2)]
    grams = [x.T @ x for x in xs_in]
    out = merge_tensors("regmean", ws, [1.0, 1.0], params=MergeParams(statistics=grams, regmean_alpha=1.0))
    stacked_x = torch.cat(xs_in)
    targets = torch.cat([x @ w.T for x, w in zip(xs_in, ws)])
    expected = torch.linalg.lstsq(stacked_x.double(), targets.double()).solution.T.float()
    assert torch.allclose(out, expected, atol=1e-5)


def test_regmean_scales_off_diagonal_gram_entries() -> None:
    ws = [T([[1.0, 0.0]]), T([[0.0, 1.0]])]
    grams = [T([[2.0, 1.0], [1.0, 1.0]]), T([[1.0, 0.0], [0.0, 3.0]])]
    out = merge_tensors("regmean", ws, [1.0, 1.0], params=MergeParams(statistics=grams))
    g1, g2 = T([[2.0, 0.9], [0.9, 1.0]]), grams[1]  # alpha 0.9 on off-diagonals
    expected = torch.linalg.inv(g1 + g2) @ (g1 @ ws[0].T + g2 @ ws[1].T)
    assert torch.allclose(out, expected.T, atol=1e-6)
    identity = merge_tensors("regmean", ws, [1.0, 1.0], params=MergeParams(statistics=[torch.eye(2)] * 2))
    assert torch.allclose(identity, T([[0.5, 0.5]]))


def test_regmean_averages_tensors_without_grams() -> None:
    out = merge_tensors("regmean", [T([1.0, 3.0]), T([3.0, 5.0])], [0.5, 0.5])
    assert torch.equal(out, T([2.0, 4.0]))


def test_merge_tensors_refuses_bad_shapes_and_weight_counts() -> None:
    with pytest.raises(MergeError, match="shapes differ"):
        merge_tensors("average", [torch.zeros(2), torch.zeros(3)], [0.5, 0.5])
    with pytest.raises(MergeError, match="2 weights for 1 tensors"):
        merge_tensors("average", [torch.zeros(2)], [0.5, 0.5])


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear", "magnitude_prune"])
@pytest.mark.parametrize("density", [0.0, -0.5, 1.5])
def test_merge_tensors_refuses_a_density_outside_0_1(method: str, density: float) -> None:
    xs = [torch.randn(4, 4, generator=gen(i)) for i in range(2)]
    with pytest.raises(MergeError, match=rf"density must be in \(0, 1\] \(the fraction kept\), got {density}"):
        merge_tensors(method, xs, [1.0, 1.0], torch.zeros(4, 4), MergeParams(density=density), gen())
