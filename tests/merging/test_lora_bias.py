"""Adapters with PEFT's lora_bias (lora_B.bias): the biases merge like ΔW in every LoRA mode."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mashup.config import MergeConfig
from mashup.merging import merge_checkpoints, merge_compatibility, merge_tensors
from mashup.merging.lora import load_adapter
from tests.merging.helpers import (adapter_deltas, adapter_logits, calibration_batches, records, sample_inputs,
                                   save_bias_lora)

WEIGHTS = "adapter_model.safetensors"
Q_PROJ = "base_model.model.model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def bias_loras(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two lora_bias adapters with different scales: α=8 (s = 2) and α=4 (s = 1), both r=4."""
    root = tmp_path_factory.mktemp("bias-loras")
    return [save_bias_lora(tiny_base, root / "b0", seed=0, lora_alpha=8),
            save_bias_lora(tiny_base, root / "b1", seed=1, lora_alpha=4)]


@torch.no_grad()
def exact_logits(base: Path, paths: list[Path], coefficients: list[float], inputs: dict) -> torch.Tensor:
    """The base with Σ cᵢ·sᵢ·(BᵢAᵢx + bᵢ) added to each adapted layer's output by hooks (PEFT scales the bias)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base).eval()
    deltas = [adapter_deltas(p) for p in paths]
    tensors = [load_adapter(p) for p in paths]
    scales = [2.0, 1.0]
    for name, module in model.named_modules():
        key = "base_model.model." + name
        if key in deltas[0]:
            dw = sum(c * d[key] for c, d in zip(coefficients, deltas)).float()
            bias = sum(c * s * t[key + ".lora_B.bias"] for c, s, t in zip(coefficients, scales, tensors))
            module.register_forward_hook(lambda m, a, o, dw=dw, bias=bias: o + a[0] @ dw.T + bias)
    return model(**inputs).logits


@pytest.mark.parametrize("mode", [{"lora_mode": "concat"}, {"lora_mode": "delta", "lora_rank": 8}],
                         ids=["concat", "delta"])
def test_linear_merges_keep_the_biases_exactly(mode: dict, bias_loras: list[Path], tiny_base: Path,
                                               tmp_path: Path) -> None:
    out = tmp_path / "out"
    merge_checkpoints(records(bias_loras), MergeConfig(method="task_arithmetic", weights=[0.7, -0.4], **mode), out)
    merged = load_file(out / WEIGHTS)
    assert sum(n.endswith(".lora_B.bias") for n in merged) == 4
    assert json.loads((out / "adapter_config.json").read_text())["lora_bias"] is True
    first, second = load_adapter(bias_loras[0]), load_adapter(bias_loras[1])
    bias = Q_PROJ + ".lora_B.bias"
    # b = Σ cᵢ·(sᵢ/s)·bᵢ with s = 2, the template's (the first adapter's) scale
    assert torch.allclose(merged[bias], 0.7 * first[bias] - 0.4 * 0.5 * second[bias], atol=1e-6)
    inputs = sample_inputs(tiny_base)
    want = exact_logits(tiny_base, bias_loras, [0.7, -0.4], inputs)
    assert torch.allclose(adapter_logits(tiny_base, out, inputs), want, atol=1e-4)


def test_non_linear_delta_merge_applies_the_method_to_the_scaled_biases(bias_loras: list[Path],
                                                                       tmp_path: Path) -> None:
    out = tmp_path / "out"
    merge_checkpoints(records(bias_loras), MergeConfig(method="ties", density=0.5), out)
    merged = load_file(out / WEIGHTS)
    bias = Q_PROJ + ".lora_B.bias"
    scaled = [2.0 * load_adapter(bias_loras[0])[bias], 1.0 * load_adapter(bias_loras[1])[bias]]
    from mashup.merging import MergeParams

    want = merge_tensors("ties", scaled, [1.0, 1.0], None, MergeParams(density=0.5, normalize=True)) / 2.0
    assert torch.allclose(merged[bias], want, atol=1e-6)


def test_ab_biases_take_the_weights_and_lambda_linearly(bias_loras: list[Path], tiny_base: Path,
                                                        tmp_path: Path) -> None:
    # ab needs one scale: two copies of one adapter, as weights [2, 0.5] and lambda 0.5
    paths = [bias_loras[0], bias_loras[0]]
    out = tmp_path / "out"
    merge_checkpoints(records(paths), MergeConfig(method="task_arithmetic", lora_mode="ab", weights=[2.0, 0.5],
                                                  **{"lambda": 0.5}), out)
    bias = Q_PROJ + ".lora_B.bias"
    assert torch.allclose(load_file(out / WEIGHTS)[bias], 1.25 * load_adapter(paths[0])[bias], atol=1e-6)


def test_compatibility_agrees_with_the_merge(bias_loras: list[Path], tiny_loras: list[Path], tmp_path: Path) -> None:
    # a bias adapter with a plain one: the plain one's bias counts as 0, and the output gets lora_bias
    recs = records([tiny_loras[0], bias_loras[0]])
    config = MergeConfig(method="average", lora_mode="concat")
    assert merge_compatibility(recs, config) is None
    merge_checkpoints(recs, config, tmp_path / "out")
    merged = load_file(tmp_path / "out" / WEIGHTS)
    bias = Q_PROJ + ".lora_B.bias"
    assert torch.allclose(merged[bias], 0.5 * load_adapter(bias_loras[0])[bias], atol=1e-6)  # equal scales (2)
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["lora_bias"] is True


def test_ab_mode_names_a_lora_bias_in_some_adapters_only(bias_loras: list[Path], tmp_path: Path) -> None:
    plain = shutil.copytree(bias_loras[0], tmp_path / "plain")
    weights = load_file(plain / WEIGHTS)
    save_file({n: t for n, t in weights.items() if not n.endswith(".bias")}, str(plain / WEIGHTS))
    config = json.loads((plain / "adapter_config.json").read_text())
    (plain / "adapter_config.json").write_text(json.dumps({**config, "lora_bias": False}))
    reason = merge_compatibility(records([plain, bias_loras[0]]), MergeConfig(method="average", lora_mode="ab"))
    assert "lora_bias differs between checkpoints" in reason and "lora_mode delta or concat" in reason


@pytest.mark.parametrize("method", ["fisher", "regmean"])
def test_statistics_fold_biases_into_base_layers_that_have_none(method: str, bias_loras: list[Path],
                                                                tiny_base: Path, tmp_path: Path) -> None:
    """Statistics come from the adapter merged into the base: a bias-less base layer gets a zero bias to take the
    lora_B bias PEFT folds into it, so the merged model computes what the adapter does."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mashup.merging.statistics import load_checkpoint_model

    inputs = sample_inputs(tiny_base)
    with torch.no_grad():
        folded = load_checkpoint_model(records(bias_loras)[0], tiny_base).eval()(**inputs).logits
        adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), bias_loras[0]).eval()
        assert torch.allclose(folded, adapter(**inputs).logits, atol=1e-5)
    merge_checkpoints(records(bias_loras), MergeConfig(method=method), tmp_path / "out", base_model_dir=tiny_base,
                      calibration_batches=calibration_batches(tiny_base))
    assert sum(n.endswith(".lora_B.bias") for n in load_file(tmp_path / "out" / WEIGHTS)) == 4


def test_a_lora_bias_adapter_loads_without_peft_taking_its_biases_for_deepspeed_shards(bias_loras: list[Path],
                                                                                      tiny_base: Path) -> None:
    import warnings

    from mashup.models import attach_adapter, load_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attach_adapter(load_model(tiny_base), bias_loras[0], trainable=False)
    assert not [w for w in caught if "DeepSpeed" in str(w.message)]


def test_training_saves_a_lora_bias_adapter_without_pefts_deepspeed_warning(bias_loras: list[Path], tiny_base: Path,
                                                                            tmp_path: Path) -> None:
    import warnings

    from mashup.models import attach_adapter, load_model
    from mashup.training import save_init_adapter, save_trained

    model = attach_adapter(load_model(tiny_base), bias_loras[0], trainable=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_init_adapter(model, tmp_path / "init.safetensors")
        save_trained(model, tmp_path / "out", str(tiny_base))
    assert not [w for w in caught if "DeepSpeed" in str(w.message)]


def test_a_switch_candidate_of_a_lora_bias_adapter_merges_it_into_bias_less_layers(bias_loras: list[Path],
                                                                                  tiny_base: Path) -> None:
    """Switch generation merges a candidate's adapter into its model: PEFT refuses to merge a lora_B bias into a
    layer without a bias (a RuntimeError traceback); the merged candidate computes what the adapter does."""
    from tests.switch.helpers import candidate

    inputs = sample_inputs(tiny_base)
    merged = candidate(tiny_base, adapter=bias_loras[0]).model
    with torch.no_grad():
        logits = merged(**inputs).logits
    assert torch.allclose(logits, exact_logits(tiny_base, bias_loras[:1], [1.0], inputs), atol=1e-4)
