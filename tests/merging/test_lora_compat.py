"""Mixed ranks, targets, alphas and init references in delta/concat mode; checks selection can run up front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mashup.config import MergeConfig
from mashup.errors import MergeError
from mashup.library.records import CheckpointRecord
from mashup.merging import merge_checkpoints, merge_compatibility, reference_key
from mashup.merging.lora import base_weight_name
from tests.merging.helpers import (adapter_deltas, adapter_logits, copy_adapter, logits_with_deltas, records,
                                   sample_inputs, zero_b_init)
from tests.tiny import save_tiny_lora


@pytest.fixture()
def mixed(tiny_base: Path, tiny_loras: list[Path], tmp_path: Path) -> list[Path]:
    """r=4 α=8 on q,v,up; r=8 α=4 on q,k (scale 0.5); r=4 α=8 rsLoRA on q,v,up (scale 4)."""
    rank8 = save_tiny_lora(tiny_base, tmp_path / "r8-src", seed=7, r=8, targets=("q_proj", "k_proj"))
    return [tiny_loras[0], copy_adapter(rank8, tmp_path / "r8", lora_alpha=4),
            copy_adapter(tiny_loras[1], tmp_path / "rs", use_rslora=True)]


def expected_sum(paths: list[Path], coefficients: list[float]) -> dict[str, torch.Tensor]:
    """Σ cᵢ·ΔWᵢ per module, a module missing from an adapter counting as ΔW = 0."""
    deltas = [adapter_deltas(p) for p in paths]
    modules = sorted({m for d in deltas for m in d})
    return {m: sum(c * d[m] for c, d in zip(coefficients, deltas) if m in d) for m in modules}  # type: ignore[misc]


@pytest.mark.parametrize("mode", [{"lora_mode": "delta", "lora_rank": 16}, {"lora_mode": "concat"}],
                         ids=["delta", "concat"])
def test_mixed_ranks_targets_and_scales_merge_exactly(mode: dict, mixed: list[Path], tiny_base: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = merge_checkpoints(records(mixed), MergeConfig(method="average", weights=[0.5, 0.3, 0.2], **mode), out)
    expected = expected_sum(mixed, [0.5, 0.3, 0.2])
    merged = adapter_deltas(out)
    assert merged.keys() == expected.keys()
    for module, delta in expected.items():
        assert float((merged[module] - delta).norm() / delta.norm()) < 1e-6, module
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == report.lora_rank == 16
    assert sorted(config["target_modules"]) == ["k_proj", "q_proj", "up_proj", "v_proj"]
    inputs = sample_inputs(tiny_base)
    by_hand = logits_with_deltas(tiny_base, {base_weight_name(m): d for m, d in expected.items()}, inputs)
    assert torch.allclose(adapter_logits(tiny_base, out, inputs), by_hand, atol=1e-5)


def test_delta_output_rank_defaults_to_the_most_common_rank(mixed: list[Path], tmp_path: Path) -> None:
    report = merge_checkpoints(records(mixed), MergeConfig(method="ties"), tmp_path / "out")
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert report.lora_mode == "delta" and report.lora_rank == config["r"] == 4
    assert config["lora_alpha"] == 8 and not config.get("use_rslora")  # the first rank-4 adapter's scale


def test_ab_refuses_mixed_adapters_with_the_reason(mixed: list[Path], tmp_path: Path) -> None:
    reason = merge_compatibility(records(mixed), MergeConfig(lora_mode="ab"))
    assert reason is not None and "LoRA rank" in reason and "ckpt1 has 8" in reason
    with pytest.raises(MergeError) as caught:
        merge_checkpoints(records(mixed), MergeConfig(lora_mode="ab"), tmp_path / "out")
    assert caught.value.line() == reason and not (tmp_path / "out").exists()


def with_references(paths: list[Path], references: list[Path | None]) -> list[CheckpointRecord]:
    recs = records(paths)
    for record, reference in zip(recs, references):
        record.init_reference = None if reference is None else str(reference)
    return recs


def test_different_zero_b_references_merge_in_delta_mode(tiny_loras: list[Path], tmp_path: Path) -> None:
    inits = [zero_b_init(tiny_loras[0], tmp_path / f"init{i}.safetensors", seed=i) for i in range(2)]
    config = MergeConfig(method="ties", density=0.5)
    report = merge_checkpoints(with_references(tiny_loras[:2], inits), config, tmp_path / "refs")
    assert report.lora_mode == "delta" and report.reference == "zero"
    assert not any("zero adapter" in w for w in report.warnings)
    merge_checkpoints(with_references(tiny_loras[:2], [None, None]), config, tmp_path / "none")
    same = [(tmp_path / d / "adapter_model.safetensors").read_bytes() for d in ("refs", "none")]
    assert same[0] == same[1]  # a B₀ = 0 init is exactly the zero reference
    with pytest.raises(MergeError, match="different init references in lora_mode ab"):
        merge_checkpoints(with_references(tiny_loras[:2], inits), config.model_copy(update={"lora_mode": "ab"}),
                          tmp_path / "ab")


def test_reference_keys(tiny_loras: list[Path], tiny_fulls: list[Path], tiny_base: Path, tmp_path: Path) -> None:
    init = zero_b_init(tiny_loras[0], tmp_path / "init.safetensors", seed=0)
    (zero_b, trained_b, none) = with_references(tiny_loras, [init, tiny_loras[2], None])
    assert reference_key(zero_b, "average", None) is None
    assert reference_key(zero_b, "ties", None) == reference_key(zero_b, "ties", "delta") == "zero"
    assert reference_key(zero_b, "ties", "ab").startswith("sha256:")  # type: ignore[union-attr]
    assert reference_key(zero_b, "task_arithmetic", None) == reference_key(zero_b, "ties", "ab")  # ab by default
    assert reference_key(trained_b, "ties", "delta").endswith("@scale=2")  # type: ignore[union-attr]
    assert reference_key(none, "ties", "ab") == reference_key(none, "ties", "delta") == "zero"
    assert reference_key(records([tiny_fulls[0]], tiny_base)[0], "ties") == "base model"
    gone = with_references(tiny_loras[:1], [tmp_path / "missing.safetensors"])[0]
    with pytest.raises(MergeError, match="init reference not found"):
        reference_key(gone, "ties")


def test_merge_compatibility_reads_no_checkpoint_weights(tiny_loras: list[Path], tiny_fulls: list[Path],
                                                         tiny_base: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    trained = with_references(tiny_loras[:2], [tiny_loras[2], tmp_path / "init.safetensors"])
    zero_b_init(tiny_loras[0], tmp_path / "init.safetensors", seed=0)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("merge_compatibility loaded weights")

    monkeypatch.setattr("mashup.io.files.load_weights", refuse)
    monkeypatch.setattr("safetensors.torch.load_file", refuse)
    assert merge_compatibility(records(tiny_loras), MergeConfig(method="ties")) is None
    assert merge_compatibility(trained[:1], MergeConfig(method="ties")) is None
    different_inits = merge_compatibility(trained, MergeConfig(method="ties"))
    assert "different init references" in different_inits  # type: ignore[operator]
    assert merge_compatibility(trained, MergeConfig(method="average")) is None  # no task vectors, no reference
    concat = merge_compatibility(records(tiny_loras), MergeConfig(method="ties", lora_mode="concat"))
    assert "concat only supports" in concat  # type: ignore[operator]
    mixed_kinds = records(tiny_loras[:1]) + records(tiny_fulls[:1], tiny_base)
    assert "checkpoint kind differs" in merge_compatibility(mixed_kinds, MergeConfig())  # type: ignore[operator]
    slerp = merge_compatibility(records(tiny_loras), MergeConfig(method="slerp"))
    assert "unknown merge method" in slerp  # type: ignore[operator]


def save_modules_to_save_lora(base: Path, out: Path, seed: int) -> Path:
    """An adapter that also saves a full lm_head copy (modules_to_save)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mashup.models import quiet_peft_deprecations

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    with quiet_peft_deprecations():
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    model.peft_config["default"].base_model_name_or_path = str(base)
    model.save_pretrained(out, save_embedding_layers=False)
    return out


@pytest.mark.parametrize("config", [MergeConfig(method="ties"), MergeConfig(method="average", lora_mode="delta"),
                                    MergeConfig(method="average", lora_mode="concat"), MergeConfig(method="average")],
                         ids=["ties", "delta", "concat", "ab"])
def test_compatibility_refuses_modules_to_save_as_the_merge_does(config: MergeConfig, tiny_base: Path,
                                                                 tmp_path: Path) -> None:
    paths = [save_modules_to_save_lora(tiny_base, tmp_path / f"mts{i}", seed=i) for i in range(2)]
    reason = merge_compatibility(records(paths), config)
    with pytest.raises(MergeError) as refused:
        merge_checkpoints(records(paths), config, tmp_path / "out")
    assert reason is not None and reason == refused.value.line()
    assert reason.startswith("adapter holds non-LoRA tensors (e.g. base_model.model.lm_head")
