"""Fisher and Gram estimation, and Fisher/RegMean merges of real checkpoints."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from mashup.config import MergeConfig
from mashup.merging import estimate_fisher, estimate_gram, merge_checkpoints
from tests.merging.helpers import adapter_logits, calibration_batches, records, sample_inputs


class TinyRegression(torch.nn.Module):
    """A model with .loss like an HF causal LM: squared error of a linear map."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 1, bias=False)
        self.proj.weight.data = torch.tensor([[1.0, -1.0, 0.5]])

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        return SimpleNamespace(loss=((self.proj(input_ids) - labels) ** 2).mean())


def test_fisher_is_the_mean_of_per_example_squared_gradients() -> None:
    x = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]])
    y = torch.tensor([[0.0], [1.0]])
    fisher = estimate_fisher(TinyRegression(), [{"input_ids": x, "labels": y}])
    w = torch.tensor([1.0, -1.0, 0.5])
    grads = [2 * (x[i] @ w - y[i]) * x[i] for i in range(2)]  # d/dw (x·w − y)²
    assert torch.allclose(fisher["proj.weight"][0], (grads[0] ** 2 + grads[1] ** 2) / 2)
    limited = estimate_fisher(TinyRegression(), [{"input_ids": x, "labels": y}], max_examples=1)
    assert torch.allclose(limited["proj.weight"][0], grads[0] ** 2)


def test_gram_covers_only_unpadded_tokens() -> None:
    linear = torch.nn.Linear(2, 2)
    model = torch.nn.Sequential(linear)
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]])
    mask = torch.tensor([[1, 1], [1, 0]])

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids)

    grams = estimate_gram(Wrapper(), [{"input_ids": x, "attention_mask": mask}])
    kept = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert torch.allclose(grams["inner.0.weight"], kept.T @ kept)


def test_fisher_and_regmean_of_identical_fulls_reproduce_them(tiny_base: Path, tiny_fulls: list[Path],
                                                              tmp_path: Path) -> None:
    batches = calibration_batches(tiny_base, n=2)
    original = load_file(tiny_fulls[0] / "model.safetensors")
    for method in ("fisher", "regmean"):
        out = tmp_path / method
        merge_checkpoints(records([tiny_fulls[0]] * 2, tiny_base), MergeConfig(method=method), out,
                          base_model_dir=tiny_base, calibration_batches=batches)
        merged = load_file(out / "model.safetensors")
        for name, tensor in original.items():
            assert torch.allclose(merged[name], tensor, atol=1e-4), (method, name)


def test_fisher_merge_of_two_fulls_lies_between_them(tiny_base: Path, tiny_fulls: list[Path], tmp_path: Path) -> None:
    merge_checkpoints(records(tiny_fulls[:2], tiny_base), MergeConfig(method="fisher", fisher_samples=2),
                      tmp_path / "out", base_model_dir=tiny_base,
                      calibration_batches=calibration_batches(tiny_base, n=2))
    a, b = (load_file(p / "model.safetensors") for p in tiny_fulls[:2])
    merged = load_file(tmp_path / "out" / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    low, high = torch.minimum(a[name], b[name]), torch.maximum(a[name], b[name])
    assert ((merged[name] >= low - 1e-6) & (merged[name] <= high + 1e-6)).all()
    assert not torch.allclose(merged[name], (a[name] + b[name]) / 2, atol=1e-4)  # not the plain mean


@pytest.mark.parametrize("method", ["fisher", "regmean"])
def test_statistics_methods_on_loras_merge_in_delta_space(method: str, tiny_base: Path, tiny_loras: list[Path],
                                                          tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = merge_checkpoints(records([tiny_loras[0]] * 2), MergeConfig(method=method, lora_mode="ab"), out,
                               base_model_dir=tiny_base, calibration_batches=calibration_batches(tiny_base, n=2))
    assert report.lora_mode == "delta" and any("delta space" in w for w in report.warnings)
    assert report.svd_relative_error is not None and report.svd_relative_error < 1e-4
    inputs = sample_inputs(tiny_base)
    expected = adapter_logits(tiny_base, tiny_loras[0], inputs)
    assert torch.allclose(adapter_logits(tiny_base, out, inputs), expected, atol=1e-4)


def test_a_base_with_nan_weights_is_named_before_its_statistics(tiny_base: Path, tiny_loras: list[Path],
                                                                 tmp_path: Path) -> None:
    """The base is not registered, so nothing checked it: NaN statistics would only show in the merged output."""
    from mashup.errors import CheckpointError
    from tests.tiny import copy_with_nan

    base = copy_with_nan(tiny_base, tmp_path / "nan-base")
    with pytest.raises(CheckpointError, match="NaN or inf") as error:
        merge_checkpoints(records(tiny_loras[:2]), MergeConfig(method="fisher"), tmp_path / "out", base_model_dir=base,
                          calibration_batches=calibration_batches(tiny_base, n=2))
    assert str(base) in error.value.line() and not (tmp_path / "out").exists()


def test_fisher_covers_a_tied_weight_under_each_of_its_names(tiny_base: Path, tmp_path: Path) -> None:
    """A LoRA of lm_head on a base that ties it to the embeddings: named_parameters lists the one tensor once."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    base.config.tie_word_embeddings = True
    base.tie_weights()
    base.save_pretrained(tmp_path / "tied")
    for name in (tiny_base / "tokenizer.json", tiny_base / "tokenizer_config.json"):
        (tmp_path / "tied" / name.name).write_bytes(name.read_bytes())
    loras = []
    for seed in range(2):
        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "tied"), LoraConfig(
            r=2, lora_alpha=4, target_modules=["q_proj", "lm_head"], init_lora_weights=False))
        model.save_pretrained(tmp_path / f"lora{seed}", save_embedding_layers=False)
        loras.append(tmp_path / f"lora{seed}")
    merge_checkpoints(records(loras), MergeConfig(method="fisher"), tmp_path / "out", base_model_dir=tmp_path / "tied",
                      calibration_batches=calibration_batches(tmp_path / "tied"))
    assert any("lm_head.lora_B" in name for name in load_file(tmp_path / "out" / "adapter_model.safetensors"))
