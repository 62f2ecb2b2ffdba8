"""Weights and lambda act linearly on ΔW in every LoRA mode; ab splits them √ per factor like PEFT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from mashup.config import MergeConfig
from mashup.merging import merge_checkpoints
from tests.merging.helpers import adapter_deltas, records


def merged_deltas(tiny_loras: list[Path], tmp_path: Path, name: str, **config: object) -> dict[str, torch.Tensor]:
    merge_checkpoints(records(tiny_loras[:2]), MergeConfig(**config), tmp_path / name)  # type: ignore[arg-type]
    return adapter_deltas(tmp_path / name)


def assert_deltas(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for module, delta in expected.items():
        assert float((actual[module] - delta).norm() / delta.norm()) < 1e-6, module


# lora_rank 8 = Σ r, so delta mode is exact and any difference is the semantics, not the truncation.
MODES = [{"lora_mode": "ab"}, {"lora_mode": "delta", "lora_rank": 8}, {"lora_mode": "concat"}]


@pytest.mark.parametrize("mode", MODES, ids=["ab", "delta", "concat"])
def test_weights_two_and_zero_give_twice_the_first_delta(mode: dict, tiny_loras: list[Path], tmp_path: Path) -> None:
    first = adapter_deltas(tiny_loras[0])
    doubled = merged_deltas(tiny_loras, tmp_path, "x2", method="task_arithmetic", weights=[2.0, 0.0], **mode)
    assert_deltas(doubled, {m: 2 * d for m, d in first.items()})
    negated = merged_deltas(tiny_loras, tmp_path, "neg", method="task_arithmetic", weights=[-1.0, 0.0], **mode)
    assert_deltas(negated, {m: -d for m, d in first.items()})


@pytest.mark.parametrize("mode", MODES, ids=["ab", "delta", "concat"])
def test_lambda_scales_the_merged_delta_linearly(mode: dict, tiny_loras: list[Path], tmp_path: Path) -> None:
    once = merged_deltas(tiny_loras, tmp_path, "l1", method="task_arithmetic", weights=[0.7, 0.3], **mode)
    thrice = merged_deltas(tiny_loras, tmp_path, "l3", method="task_arithmetic", weights=[0.7, 0.3], lambda_=3.0,
                           **mode)
    assert_deltas(thrice, {m: 3 * d for m, d in once.items()})


@pytest.mark.parametrize("mode", MODES, ids=["ab", "delta", "concat"])
def test_average_of_one_weighted_adapter_is_that_adapter(mode: dict, tiny_loras: list[Path], tmp_path: Path) -> None:
    only = merged_deltas(tiny_loras, tmp_path, "avg", method="average", weights=[2.0, 0.0], **mode)
    assert_deltas(only, adapter_deltas(tiny_loras[0]))


def test_lambda_is_linear_for_ties_in_delta_mode(tiny_loras: list[Path], tmp_path: Path) -> None:
    once = merged_deltas(tiny_loras, tmp_path, "t1", method="ties", density=0.5)
    half = merged_deltas(tiny_loras, tmp_path, "t05", method="ties", density=0.5, lambda_=0.5)
    assert_deltas(half, {m: 0.5 * d for m, d in once.items()})


def test_ab_summed_merge_equals_peft_add_weighted_adapter_linear(tiny_base: Path, tiny_loras: list[Path],
                                                                 tmp_path: Path) -> None:
    weights = [0.7, -0.4]
    ours = merged_deltas(tiny_loras, tmp_path, "ours", method="task_arithmetic", weights=weights, lora_mode="ab")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), tiny_loras[0],
                                      adapter_name="first")
    model.load_adapter(tiny_loras[1], adapter_name="second")
    model.add_weighted_adapter(["first", "second"], weights, "merged", combination_type="linear")
    peft = {name: module.get_delta_weight("merged").double() for name, module in model.named_modules()
            if hasattr(module, "lora_A") and "merged" in module.lora_A}
    assert_deltas(ours, peft)
