"""RegMean of full checkpoints averages the 2-D weights it has no Gram for: it says so once per merge (how many, one
example) where they are linear weights it would otherwise solve for (Mixtral's per-expert weights and router, which
transformers 5 keeps out of Linear layers), not for the embeddings it averages by design. A layer the calibration
batches never ran (a vision tower on text) has all-zero Grams: averaged too, not solved to zero."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config

from mashup.config import MergeConfig
from mashup.merging import MergeParams, merge_checkpoints, merge_tensors
from tests.merging.helpers import calibration_batches, records
from tests.test_converted_checkpoints import _full, _gemma3, _mixtral
from tests.tiny import build_tokenizer, save_tiny_full

EXPERT = "model.layers.0.block_sparse_moe.experts.0.w1.weight"


def _text_batches(vocab: int) -> list[dict[str, torch.Tensor]]:
    tokens = torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": tokens, "attention_mask": torch.ones_like(tokens), "labels": tokens}]


def _merged(base: Path, fulls: list[Path], out: Path, method: str, batches) -> tuple[list[str], dict, list[dict]]:
    report = merge_checkpoints(records(fulls, base), MergeConfig(method=method), out, base_model_dir=base,
                               calibration_batches=batches)
    return report.warnings, load_file(out / "model.safetensors"), [load_file(f / "model.safetensors") for f in fulls]


def _averaged(merged: dict, inputs: list[dict], name: str) -> bool:
    return torch.allclose(merged[name], (inputs[0][name] + inputs[1][name]) / 2, atol=1e-6)


def test_a_mixtral_regmean_warns_once_of_the_expert_and_router_weights_it_averages(tmp_path: Path, caplog) -> None:
    base = _mixtral(tmp_path / "base")
    fulls = [_full(base, tmp_path / f"full{i}", seed=i) for i in range(2)]
    warnings, merged, inputs = _merged(base, fulls, tmp_path / "out", "regmean", _text_batches(64))
    said = [w for w in warnings if "RegMean statistics" in w]
    # 4 experts × (w1, w2, w3) and the router's gate
    assert said == [f"13 linear weights have no RegMean statistics and are averaged (e.g. {EXPERT}: no Linear or "
                    "Conv1D layer that ran on the calibration batches takes it)"]
    assert [r.getMessage() for r in caplog.records].count(said[0]) == 1
    assert _averaged(merged, inputs, EXPERT) and _averaged(merged, inputs, EXPERT.replace("experts.0.w1", "gate"))
    assert not _averaged(merged, inputs, "model.layers.0.self_attn.q_proj.weight")


def test_a_plain_decoders_regmean_warns_of_nothing_it_averages_by_design(tiny_base: Path, tiny_fulls: list[Path],
                                                                         tmp_path: Path) -> None:
    """Embeddings are averaged by design and the head is a Linear layer: nothing to say."""
    warnings, merged, inputs = _merged(tiny_base, tiny_fulls[:2], tmp_path / "out", "regmean",
                                       calibration_batches(tiny_base))
    assert warnings == [] and _averaged(merged, inputs, "model.embed_tokens.weight")


def test_a_gpt2_regmean_warns_of_nothing_its_position_embeddings_included(tmp_path: Path) -> None:
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=32, eos_token_id=0,
                        bos_token_id=0, pad_token_id=0)
    base = tmp_path / "base"
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    fulls = [save_tiny_full(base, tmp_path / f"full{i}", seed=i) for i in range(2)]
    warnings, _, _ = _merged(base, fulls, tmp_path / "out", "regmean", calibration_batches(base))
    assert warnings == []


def test_a_layer_the_calibration_never_ran_is_averaged_not_zeroed_and_counted(tmp_path: Path) -> None:
    """Gemma-3's vision tower on text-only batches: its Linear layers' Grams are all zero."""
    base = _gemma3(tmp_path / "base")
    fulls = [_full(base, tmp_path / f"full{i}", seed=i) for i in range(2)]
    warnings, merged, inputs = _merged(base, fulls, tmp_path / "out", "regmean", _text_batches(100))
    vision = "vision_tower.encoder.layers.0.self_attn.q_proj.weight"
    assert merged[vision].any() and _averaged(merged, inputs, vision)
    # the projector's bare weight, the pooling head's in_proj_weight and the vision tower's 9 Linear layers
    assert [w for w in warnings if "RegMean statistics" in w] == [
        "11 linear weights have no RegMean statistics and are averaged (e.g. multi_modal_projector."
        "mm_input_projection_weight: no Linear or Conv1D layer that ran on the calibration batches takes it)"]
    assert not _averaged(merged, inputs, "language_model.model.layers.0.self_attn.q_proj.weight")


def test_all_zero_grams_average_the_weight() -> None:
    tensors = [torch.randn(3, 4), torch.randn(3, 4)]
    params = MergeParams(statistics=[torch.zeros(4, 4), torch.zeros(4, 4)])
    merged = merge_tensors("regmean", tensors, [1.0, 3.0], None, params)
    assert torch.allclose(merged, (tensors[0] + 3 * tensors[1]) / 4)


@pytest.mark.parametrize("method", ["fisher"])
def test_fishers_own_warning_is_unchanged(tmp_path: Path, method: str) -> None:
    base = _mixtral(tmp_path / "base")
    fulls = [_full(base, tmp_path / f"full{i}", seed=i) for i in range(2)]
    warnings, _, _ = _merged(base, fulls, tmp_path / "out", method, _text_batches(64))
    assert not [w for w in warnings if "RegMean" in w] and any("no Fisher information" in w for w in warnings)
