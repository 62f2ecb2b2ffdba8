"""Merge defaults that mean what they say: per-method densities, per-method LoRA modes, warnings, CLI help."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from mashup.cli import app
from mashup.config import MergeConfig
from mashup.merging import MergeParams, get_merge_method, merge_checkpoints, merge_method_names, merge_tensors
from mashup.merging.plan import build_plan
from tests.merging.helpers import records

DEFAULT_DENSITIES = {"ties": 0.2, "dare_ties": 0.2, "dare_linear": 0.2, "magnitude_prune": 0.2}
SPARSIFYING = sorted(DEFAULT_DENSITIES)
LINEAR = ["average", "task_arithmetic"]


def test_each_sparsifying_method_has_a_default_density_below_one() -> None:
    for name in merge_method_names():
        method = get_merge_method(name)
        assert method.default_density == DEFAULT_DENSITIES.get(name), name
        assert method.uses_density == (name in DEFAULT_DENSITIES), name


def test_tensor_level_default_density_trims() -> None:
    delta = torch.randn(20, 10, generator=torch.Generator().manual_seed(0))
    pruned = merge_tensors("magnitude_prune", [delta], [1.0])
    assert int(pruned.count_nonzero()) == int(0.2 * delta.numel())
    everything = merge_tensors("magnitude_prune", [delta], [1.0], None, MergeParams(density=1.0))
    assert torch.equal(everything, delta)


@pytest.mark.parametrize("method", SPARSIFYING)
def test_default_density_is_resolved_recorded_and_used(method: str, tiny_loras: list[Path], tmp_path: Path) -> None:
    report = merge_checkpoints(records(tiny_loras[:2]), MergeConfig(method=method), tmp_path / "default")
    assert report.density == DEFAULT_DENSITIES[method]
    saved = yaml.safe_load((tmp_path / "default" / "merge_config.yaml").read_text())
    assert saved["density"] == DEFAULT_DENSITIES[method]
    assert not any("nothing is" in w for w in report.warnings)
    full = merge_checkpoints(records(tiny_loras[:2]), MergeConfig(method=method, density=1.0), tmp_path / "full")
    assert full.density == 1.0
    first, second = ((tmp_path / d / "adapter_model.safetensors").read_bytes() for d in ("default", "full"))
    assert first != second


@pytest.mark.parametrize(("method", "verb"), [("ties", "trimmed"), ("dare_ties", "dropped"),
                                              ("dare_linear", "dropped"), ("magnitude_prune", "trimmed")])
def test_density_one_warns_that_nothing_is_trimmed_or_dropped(method: str, verb: str, tiny_loras: list[Path]) -> None:
    plan = build_plan(records(tiny_loras[:2]), MergeConfig(method=method, density=1.0))
    assert any(f"density 1.0 with {method}: nothing is {verb}" in w for w in plan.warnings), plan.warnings


def test_density_for_a_method_without_one_is_warned_and_not_recorded(tiny_loras: list[Path]) -> None:
    plan = build_plan(records(tiny_loras[:2]), MergeConfig(method="average", density=0.5))
    assert any("density 0.5 is ignored by average" in w for w in plan.warnings)
    assert plan.config.density is None and plan.params.density is None


@pytest.mark.parametrize("method", LINEAR + SPARSIFYING)
def test_lora_mode_defaults_to_ab_for_linear_and_delta_for_nonlinear_methods(method: str, tiny_loras: list[Path],
                                                                              tmp_path: Path) -> None:
    report = merge_checkpoints(records(tiny_loras[:2]), MergeConfig(method=method), tmp_path / "out")
    expected = "ab" if method in LINEAR else "delta"
    assert report.lora_mode == expected
    assert yaml.safe_load((tmp_path / "out" / "merge_config.yaml").read_text())["lora_mode"] == expected
    assert not any("lora_mode ab with" in w for w in report.warnings)
    assert (report.svd_relative_error is None) == (expected == "ab")


@pytest.mark.parametrize("method", SPARSIFYING)
def test_explicit_ab_with_a_nonlinear_method_is_kept_and_warned(method: str, tiny_loras: list[Path]) -> None:
    plan = build_plan(records(tiny_loras[:2]), MergeConfig(method=method, lora_mode="ab"))
    assert plan.lora_mode == "ab"
    assert any(f"lora_mode ab with {method}" in w and "no clear meaning" in w for w in plan.warnings)


def test_delta_output_rank_is_recorded(tiny_loras: list[Path], tmp_path: Path) -> None:
    report = merge_checkpoints(records(tiny_loras[:2]), MergeConfig(method="ties", lora_rank=6), tmp_path / "out")
    assert report.lora_rank == 6
    assert yaml.safe_load((tmp_path / "out" / "merge_config.yaml").read_text())["lora_rank"] == 6


def test_merge_help_states_each_default() -> None:
    result = CliRunner().invoke(app, ["merge", "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert set(DEFAULT_DENSITIES.values()) == {0.2}
    names = sorted(DEFAULT_DENSITIES)
    assert f"the method's: 0.2 for {', '.join(names[:-1])} and {names[-1]}; none for the others" in text
    assert "the method's: ab for average and task_arithmetic, delta for the others" in text
    run_help = " ".join(CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "400"}).output.split())
    assert "from --config, else the method's: 0.2 for" in run_help  # run shares the text
    assert "[default: 1.0]" not in text.split("--density")[1].split("--lambda")[0]


@pytest.mark.parametrize(("settings", "warning"), [
    ({"method": "task_arithmetic", "sign": "count"}, "sign count is ignored by task_arithmetic"),
    ({"method": "dare_linear", "sign": "count"}, "sign count is ignored by dare_linear"),
    ({"method": "fisher", "normalize": False}, "normalize false is ignored by fisher"),
    ({"method": "regmean", "normalize": True}, "normalize true is ignored by regmean"),
])
def test_sign_and_normalize_a_method_ignores_are_warned_about(settings: dict, warning: str,
                                                              tiny_base: Path, tiny_fulls: list[Path]) -> None:
    plan = build_plan(records(tiny_fulls[:2], tiny_base), MergeConfig(**settings))
    assert [w for w in plan.warnings if w.startswith(warning)], plan.warnings


def test_sign_and_normalize_a_method_uses_are_not_warned_about(tiny_base: Path, tiny_fulls: list[Path]) -> None:
    for settings in [{"method": "ties", "sign": "count"}, {"method": "dare_ties", "sign": "count"},
                     {"method": "average", "normalize": False}, {"method": "ties", "normalize": False}]:
        plan = build_plan(records(tiny_fulls[:2], tiny_base), MergeConfig(**settings))
        assert not [w for w in plan.warnings if "sign" in w or "normalize" in w], (settings, plan.warnings)
