"""Fisher and RegMean on a GPT-2 style model, whose Conv1D layers store their weight (in, out) (fan_in_fan_out)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from mashup.config import MergeConfig
from mashup.errors import MergeError
from mashup.merging import MergeParams, merge_checkpoints, merge_tensors
from mashup.merging.lora import base_weight_name, merge_lora
from mashup.merging.plan import build_plan
from mashup.merging.statistics import compute_statistics
from mashup.models import quiet_peft_deprecations
from tests.merging.helpers import adapter_deltas, calibration_batches, records
from tests.tiny import build_tokenizer, save_tiny_full

# c_attn stores (16, 48), mlp.c_proj (64, 16); attn.c_proj (16, 16) is square, so only the layer type tells its layout
TARGETS = ["c_attn", "c_proj"]


@pytest.fixture(scope="module")
def gpt2_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gpt2-base")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=2, n_head=2, n_positions=128,
                        eos_token_id=0, bos_token_id=0, pad_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gpt2_loras(gpt2_base: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("gpt2-loras")
    paths = []
    for seed in range(2):
        torch.manual_seed(seed)
        config = LoraConfig(r=2, lora_alpha=4, target_modules=TARGETS, fan_in_fan_out=True, init_lora_weights=False,
                            task_type="CAUSAL_LM")
        with quiet_peft_deprecations():
            model = get_peft_model(AutoModelForCausalLM.from_pretrained(gpt2_base), config)
        model.peft_config["default"].base_model_name_or_path = str(gpt2_base)
        model.save_pretrained(root / f"lora{seed}", save_embedding_layers=False)
        paths.append(root / f"lora{seed}")
    return paths


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


def test_lora_fisher_weights_each_entry_of_the_delta_by_its_own_fisher(gpt2_base: Path, gpt2_loras: list[Path],
                                                                       tmp_path: Path) -> None:
    config = MergeConfig(method="fisher", lora_rank=16)  # 16 = min(out, in) of every module: no truncation
    batches = calibration_batches(gpt2_base)
    merge_checkpoints(records(gpt2_loras), config, tmp_path / "out", base_model_dir=gpt2_base,
                      calibration_batches=batches)
    got, inputs = adapter_deltas(tmp_path / "out"), [adapter_deltas(p) for p in gpt2_loras]
    statistics = compute_statistics(build_plan(records(gpt2_loras), config), gpt2_base, batches)
    assert statistics is not None and len(got) == 6  # c_attn, attn.c_proj, mlp.c_proj × 2 layers
    for module, delta in got.items():
        fishers = [s[base_weight_name(module)].T for s in statistics]  # Conv1D's (in, out) → ΔW's (out, in)
        want = merge_tensors("fisher", [d[module].float() for d in inputs], [0.5, 0.5], None,
                             MergeParams(statistics=fishers))
        assert relative(delta, want) < 1e-5, module


def test_lora_regmean_solves_with_the_conv1d_input_grams(gpt2_base: Path, gpt2_loras: list[Path],
                                                         tmp_path: Path) -> None:
    config = MergeConfig(method="regmean", lora_rank=16)
    batches = calibration_batches(gpt2_base)
    merge_checkpoints(records(gpt2_loras), config, tmp_path / "out", base_model_dir=gpt2_base,
                      calibration_batches=batches)
    got, inputs = adapter_deltas(tmp_path / "out"), [adapter_deltas(p) for p in gpt2_loras]
    statistics = compute_statistics(build_plan(records(gpt2_loras), config), gpt2_base, batches)
    assert statistics is not None
    for module, delta in got.items():
        grams = [s[base_weight_name(module)] for s in statistics]
        want = merge_tensors("regmean", [d[module].float() for d in inputs], [0.5, 0.5], None,
                             MergeParams(statistics=grams))
        assert relative(delta, want) < 1e-5, module


def test_full_regmean_merges_conv1d_weights_as_stored(gpt2_base: Path, tmp_path: Path) -> None:
    fulls = [save_tiny_full(gpt2_base, tmp_path / f"full{i}", seed=20 + i) for i in range(2)]
    config, batches = MergeConfig(method="regmean"), calibration_batches(gpt2_base)
    merge_checkpoints(records(fulls, gpt2_base), config, tmp_path / "out", base_model_dir=gpt2_base,
                      calibration_batches=batches)
    merged = load_file(tmp_path / "out" / "model.safetensors")
    statistics = compute_statistics(build_plan(records(fulls, gpt2_base), config), gpt2_base, batches)
    assert statistics is not None
    weights = [load_file(p / "model.safetensors") for p in fulls]
    for name in ["transformer.h.0.attn.c_attn.weight", "transformer.h.1.attn.c_proj.weight",
                 "transformer.h.0.mlp.c_fc.weight"]:
        # the Linear-layout closed form on the transposed weights, transposed back
        want = merge_tensors("regmean", [w[name].T for w in weights], [0.5, 0.5], None,
                             MergeParams(statistics=[s[name] for s in statistics])).T
        assert relative(merged[name], want) < 1e-5, name
        assert relative(merged[name], (weights[0][name] + weights[1][name]) / 2) > 1e-3, name  # not the mean


def test_an_adapted_module_without_statistics_is_a_merge_error(gpt2_loras: list[Path], tmp_path: Path) -> None:
    plan = build_plan(records(gpt2_loras), MergeConfig(method="regmean"))
    with pytest.raises(MergeError, match="no gram statistics for transformer.h.0.attn.c_attn.weight"):
        merge_lora(plan, tmp_path, [{}, {}])


def test_statistics_of_another_shape_are_refused() -> None:
    x = [torch.randn(4, 3), torch.randn(4, 3)]
    with pytest.raises(MergeError, match=r"Fisher statistic has shape \(3, 4\) but the tensor \(4, 3\)"):
        merge_tensors("fisher", x, [0.5, 0.5], None, MergeParams(statistics=[torch.rand(3, 4)] * 2))
    with pytest.raises(MergeError, match=r"regmean Gram has shape \(4, 4\)") as caught:
        merge_tensors("regmean", x, [0.5, 0.5], None, MergeParams(statistics=[torch.eye(4)] * 2))
    assert "pass MergeParams(transposed=True)" in caught.value.fix  # the Gram of a Conv1D's inputs
    with pytest.raises(MergeError, match=r"regmean Gram has shape \(5, 5\)") as caught:
        merge_tensors("regmean", x, [0.5, 0.5], None, MergeParams(statistics=[torch.eye(5)] * 2))
    assert caught.value.fix == "pass the Gram of each weight's own layer inputs"
    transposed = merge_tensors("regmean", [t.T for t in x], [0.5, 0.5], None,
                               MergeParams(statistics=[torch.eye(3) + 0.1] * 2, transposed=True))
    linear = merge_tensors("regmean", x, [0.5, 0.5], None, MergeParams(statistics=[torch.eye(3) + 0.1] * 2))
    assert torch.allclose(transposed, linear.T, atol=1e-6)
