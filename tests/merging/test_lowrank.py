"""Factoring ΔW back to rank r: exact from stacked factors, near-optimal when dense, never a dense full SVD."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mashup.config import MergeConfig
from mashup.merging import MergeParams, merge_checkpoints, merge_tensors
from mashup.merging.lowrank import factor_dense, factor_stacked
from tests.merging.helpers import adapter_deltas, copy_adapter, records


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_factors(k: int = 3, out: int = 96, rank: int = 4, inp: int = 80) -> tuple[list, list]:
    g = gen(0)
    return ([torch.randn(out, rank, generator=g) for _ in range(k)],
            [torch.randn(rank, inp, generator=g) for _ in range(k)])


def optimal_error(delta: torch.Tensor, rank: int) -> float:
    s = torch.linalg.svdvals(delta.double())
    return float((s[rank:] ** 2).sum().sqrt() / (s**2).sum().sqrt())


@pytest.mark.parametrize("rank", [12, 16])
def test_stacked_factors_reconstruct_delta_exactly_at_rank_up_to_the_sum(rank: int) -> None:
    bs, as_ = random_factors()
    delta = sum(b.double() @ a.double() for b, a in zip(bs, as_))
    factors = factor_stacked(bs, as_, rank, scale=2.0, generator=gen(1))
    assert factors.b.shape == (96, rank) and factors.a.shape == (rank, 80)
    rebuilt = 2.0 * factors.b @ factors.a
    assert float((rebuilt - delta).norm() / delta.norm()) < 1e-6
    assert factors.relative_error < 1e-6


def test_stacked_truncation_is_the_optimal_rank_r_approximation() -> None:
    bs, as_ = random_factors()
    delta = sum(b.double() @ a.double() for b, a in zip(bs, as_))
    factors = factor_stacked(bs, as_, 5, scale=0.5)
    expected = optimal_error(delta, 5)
    assert factors.relative_error == pytest.approx(expected, rel=1e-9)
    assert float((0.5 * factors.b @ factors.a - delta).norm() / delta.norm()) == pytest.approx(expected, rel=1e-9)


def test_dense_factorization_is_near_optimal_and_reports_its_measured_error() -> None:
    bs, as_ = random_factors(k=3, out=256, rank=8, inp=192)
    merged = merge_tensors("ties", [b @ a for b, a in zip(bs, as_)], [1.0, 1.0, 1.0], None, MergeParams(density=0.2))
    factors = factor_dense(merged, 8, scale=2.0, generator=gen(3))
    measured = float((merged.double() - 2.0 * factors.b @ factors.a).norm() / merged.double().norm())
    assert factors.relative_error == pytest.approx(measured, rel=1e-5)
    assert measured <= 1.01 * optimal_error(merged, 8)


def test_components_past_the_rank_of_delta_are_trainable_and_add_nothing() -> None:
    bs, as_ = random_factors(k=1)
    factors = factor_stacked(bs, as_, 8, scale=1.0, generator=gen(2))
    assert torch.equal(factors.b[:, 4:], torch.zeros(96, 4))
    assert factors.a[4:].abs().min() > 0 and factors.a[4:].abs().max() <= 1 / 80**0.5  # PEFT's kaiming bound
    assert torch.allclose(factors.b @ factors.a, bs[0].double() @ as_[0].double(), atol=1e-9)


@pytest.fixture()
def no_dense_svd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any SVD whose smaller side exceeds 2r+8 = 16 (every tiny ΔW is at least 16×32)."""
    for module, name in ((torch.linalg, "svd"), (torch.linalg, "svdvals"), (torch, "svd")):
        original = getattr(module, name)

        def guarded(matrix: torch.Tensor, *args: object, _original=original, **kwargs: object) -> object:
            if min(matrix.shape[-2:]) > 16:
                raise AssertionError(f"dense SVD of a {tuple(matrix.shape)} matrix")
            return _original(matrix, *args, **kwargs)

        monkeypatch.setattr(module, name, guarded)


@pytest.mark.parametrize("method", ["average", "ties", "dare_linear"])
def test_delta_merges_never_take_a_dense_svd_of_a_module(method: str, no_dense_svd: None, tiny_loras: list[Path],
                                                         tmp_path: Path) -> None:
    report = merge_checkpoints(records(tiny_loras), MergeConfig(method=method, lora_mode="delta"), tmp_path / "out")
    assert report.svd_relative_error is not None and 0 < report.svd_relative_error < 1


def test_delta_average_at_rank_sum_is_exact(tiny_loras: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = merge_checkpoints(records(tiny_loras), MergeConfig(method="average", lora_mode="delta", lora_rank=12),
                               out)
    assert report.svd_relative_error is not None and report.svd_relative_error < 1e-6
    inputs = [adapter_deltas(p) for p in tiny_loras]
    for module, merged in adapter_deltas(out).items():
        expected = sum(d[module] for d in inputs) / 3
        assert float((merged - expected).norm() / expected.norm()) < 1e-6


@pytest.mark.parametrize("scale", [2.0, -2.0])
def test_factors_keep_the_sign_of_a_negative_scale(scale: float) -> None:
    bs, as_ = random_factors(k=2)
    delta = sum(b.double() @ a.double() for b, a in zip(bs, as_))
    stacked = factor_stacked(bs, as_, 8, scale, gen(1))
    dense = factor_dense(delta, 8, scale, gen(1))
    for factors in (stacked, dense):
        assert torch.isfinite(factors.b).all() and torch.isfinite(factors.a).all()
        assert torch.allclose(scale * factors.b @ factors.a, delta, atol=1e-6 * float(delta.abs().max()))


def test_negative_alpha_adapters_merge_in_delta_mode(tiny_loras: list[Path], tmp_path: Path) -> None:
    """lora_alpha < 0 (a negated task vector): B·A·scale of the output is the merged ΔW, not NaN."""
    paths = [copy_adapter(p, tmp_path / f"neg{i}", lora_alpha=-8) for i, p in enumerate(tiny_loras[:2])]
    out = tmp_path / "out"
    merge_checkpoints(records(paths), MergeConfig(method="average", lora_mode="delta", lora_rank=8), out)
    got, inputs = adapter_deltas(out), [adapter_deltas(p) for p in paths]
    assert got.keys() == inputs[0].keys()
    for module, delta in got.items():
        assert torch.allclose(delta, (inputs[0][module] + inputs[1][module]) / 2, atol=1e-6), module
    merge_checkpoints(records(paths), MergeConfig(method="ties"), tmp_path / "ties")  # the dense route: no NaN
