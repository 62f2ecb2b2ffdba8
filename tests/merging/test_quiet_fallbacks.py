"""Fisher and RegMean fall back to the weighted mean where the calibration batches tell them nothing, and say so once
per merge (how many, one named), in full and LoRA merges alike: a layer the batches never ran (Gemma-3's vision
tower on text: all-zero Grams, zero Fisher information), and, for RegMean, input features the batches never made
non-zero, whose columns keep the weighted mean (the pseudo-inverse made them zero, warning once per weight)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

from mashup.config import MergeConfig
from mashup.merging import MergeParams, merge_checkpoints, merge_tensors
from mashup.merging.registry import get_merge_method
from mashup.models import load_model
from tests.merging.helpers import adapter_deltas, calibration_batches, records
from tests.test_converted_checkpoints import _full, _gemma3
from tests.tiny import save_tiny_base, save_tiny_lora

VISION_Q = "model.vision_tower.encoder.layers.0.self_attn.q_proj"
NEVER_RAN = "no Linear or Conv1D layer that ran on the calibration batches takes it"
NO_GRADIENT = "no gradient reached it on the calibration batches, as in a layer they never ran"
SINGULAR = "Gram sum is singular"


def _text_batches() -> list[dict[str, torch.Tensor]]:
    tokens = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": tokens, "attention_mask": torch.ones_like(tokens), "labels": tokens}]


def _vision_and_text_lora(base: Path, out: Path, seed: int) -> Path:
    """An adapter of the text model's and the vision tower's q_proj and v_proj, its factors random as if trained."""
    torch.manual_seed(seed)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=r".*\.(q_proj|v_proj)", init_lora_weights=False)
    get_peft_model(load_model(base), config).save_pretrained(out)
    return out


def _said(caplog: pytest.LogCaptureFixture, message: str) -> int:
    return [r.getMessage() for r in caplog.records].count(message)


@pytest.mark.parametrize(("method", "lacking", "why"), [
    ("regmean", "have no RegMean statistics", NEVER_RAN),
    ("fisher", "have zero Fisher information in every checkpoint", NO_GRADIENT)])
def test_a_lora_merge_says_once_which_modules_deltas_it_averages_for_a_layer_never_ran(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, method: str, lacking: str, why: str) -> None:
    base = _gemma3(tmp_path / "base")
    loras = [_vision_and_text_lora(base, tmp_path / f"lora{i}", seed=i) for i in range(2)]
    out = tmp_path / "out"
    report = merge_checkpoints(records(loras, base), MergeConfig(method=method, lora_rank=4), out,
                               base_model_dir=base, calibration_batches=_text_batches())
    # the vision tower's q_proj and v_proj
    expected = f"2 adapted weights {lacking} and their ΔW are averaged (e.g. {VISION_Q}.weight: {why})"
    assert report.warnings == [expected] and _said(caplog, expected) == 1
    assert not [r for r in caplog.records if SINGULAR in r.getMessage()]
    merged, inputs = adapter_deltas(out), [adapter_deltas(p) for p in loras]
    module = f"base_model.model.{VISION_Q}"
    assert torch.allclose(merged[module], (inputs[0][module] + inputs[1][module]) / 2, atol=1e-5)
    text = module.replace("vision_tower.encoder", "language_model")
    # RegMean's solve gives the mean there too: with one layer, its inputs are the base's in either checkpoint
    assert method == "regmean" or not torch.allclose(merged[text], (inputs[0][text] + inputs[1][text]) / 2, atol=1e-5)


def test_a_full_fisher_merge_says_once_which_tensors_it_averages_for_want_of_fisher_information(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = _gemma3(tmp_path / "base")
    fulls = [_full(base, tmp_path / f"full{i}", seed=i) for i in range(2)]
    out = tmp_path / "out"
    report = merge_checkpoints(records(fulls, base), MergeConfig(method="fisher"), out, base_model_dir=base,
                               calibration_batches=_text_batches())
    # the vision tower's every tensor (norms and biases too) and the projector's two
    expected = ("34 tensors have zero Fisher information in every checkpoint and are averaged (e.g. "
                f"multi_modal_projector.mm_input_projection_weight: {NO_GRADIENT})")
    assert report.warnings == [expected] and _said(caplog, expected) == 1
    merged, inputs = load_file(out / "model.safetensors"), [load_file(f / "model.safetensors") for f in fulls]
    for name, averaged in (("vision_tower.encoder.layers.0.mlp.fc1.weight", True),
                           ("language_model.model.layers.0.mlp.up_proj.weight", False)):
        assert torch.allclose(merged[name], (inputs[0][name] + inputs[1][name]) / 2, atol=1e-6) is averaged


@pytest.mark.parametrize("method", ["fisher", "regmean"])
def test_a_plain_decoders_lora_merge_says_nothing_of_fallbacks(tiny_base: Path, tiny_loras: list[Path],
                                                                tmp_path: Path, method: str) -> None:
    report = merge_checkpoints(records(tiny_loras[:2], tiny_base), MergeConfig(method=method), tmp_path / "out",
                               base_model_dir=tiny_base, calibration_batches=calibration_batches(tiny_base))
    assert report.warnings == []


def _grams_missing_feature(feature: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    xs = [torch.randn(20, 4, generator=generator) for _ in range(2)]
    for x in xs:
        x[:, feature] = 0  # the calibration batches never made this input non-zero
    return [x.T @ x for x in xs], [torch.randn(3, 4, generator=generator) for _ in range(2)]


@pytest.mark.parametrize("transposed", [False, True])
def test_regmean_keeps_the_weighted_mean_of_the_columns_of_unseen_input_features(
        caplog: pytest.LogCaptureFixture, transposed: bool) -> None:
    """Those columns do not enter RegMean's objective: the pseudo-inverse made them 0. The others are the solve on
    the features seen (the system decouples)."""
    grams, ws = _grams_missing_feature(2)
    stored = [w.T.contiguous() for w in ws] if transposed else ws
    merged = merge_tensors("regmean", stored, [1.0, 3.0], None, MergeParams(statistics=grams, transposed=transposed))
    merged = merged.T if transposed else merged
    assert torch.allclose(merged[:, 2], (ws[0][:, 2] + 3 * ws[1][:, 2]) / 4)
    seen = [0, 1, 3]
    regularized = [0.9 * g[seen][:, seen] + 0.1 * torch.diag(torch.diagonal(g)[seen]) for g in grams]
    lhs = (regularized[0] + 3 * regularized[1]).double()
    rhs = (regularized[0] @ ws[0][:, seen].T + 3 * regularized[1] @ ws[1][:, seen].T).double()
    assert torch.allclose(merged[:, seen], torch.linalg.solve(lhs, rhs).T.float(), atol=1e-5)
    assert not [r for r in caplog.records if SINGULAR in r.getMessage()]


def test_a_feature_seen_only_by_a_checkpoint_of_weight_zero_counts_as_unseen() -> None:
    grams, ws = _grams_missing_feature(2)
    grams[1] = grams[1] + torch.diag(torch.tensor([0.0, 0.0, 5.0, 0.0]))
    merged = merge_tensors("regmean", ws, [1.0, 0.0], None, MergeParams(statistics=grams))
    assert torch.allclose(merged, ws[0], atol=1e-5)


def test_a_gram_sum_singular_on_the_seen_features_takes_the_pseudo_inverse_said_once_per_merge(
        caplog: pytest.LogCaptureFixture) -> None:
    """At alpha 1 two always-equal features make it singular (at alpha < 1 it cannot be, with weights ≥ 0)."""
    generator = torch.Generator().manual_seed(0)
    xs = [torch.randn(20, 4, generator=generator) for _ in range(2)]
    for x in xs:
        x[:, 3] = x[:, 2]
    ws = [torch.randn(3, 4, generator=generator) for _ in range(2)]
    params = MergeParams(statistics=[x.T @ x for x in xs], regmean_alpha=1.0)
    method = get_merge_method("regmean")  # a merge's one instance
    with caplog.at_level(logging.WARNING):
        merged = [merge_tensors(method, ws, [1.0, 1.0], None, params) for _ in range(3)]
    rhs = sum(x.T @ x @ w.T for x, w in zip(xs, ws)).double()
    least_norm = torch.linalg.pinv(sum(x.T @ x for x in xs).double()) @ rhs
    assert torch.allclose(merged[0], least_norm.T.float(), atol=1e-4)
    assert len([r for r in caplog.records if SINGULAR in r.getMessage()]) == 1


def _with_dead_inputs(source: Path, out: Path) -> Path:
    """A copy of a model dir whose first layer's input norm zeroes input features 0 and 1 of q, k and v_proj."""
    shutil.copytree(source, out)
    file = out / "model.safetensors"
    weights = load_file(file)
    weights["model.layers.0.input_layernorm.weight"][:2] = 0
    save_file(weights, str(file), metadata={"format": "pt"})
    return out


def test_a_full_regmean_says_once_of_weights_with_unseen_input_features_and_keeps_their_mean(
        tiny_base: Path, tiny_fulls: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fulls = [_with_dead_inputs(f, tmp_path / f"full{i}") for i, f in enumerate(tiny_fulls[:2])]
    out = tmp_path / "out"
    report = merge_checkpoints(records(fulls, tiny_base), MergeConfig(method="regmean"), out,
                               base_model_dir=tiny_base, calibration_batches=calibration_batches(tiny_base))
    expected = ("3 linear weights have input features the calibration batches never made non-zero (e.g. "
                "model.layers.0.self_attn.k_proj.weight: 2 of 32): their columns for those features keep the "
                "weighted mean, which RegMean has nothing to weigh by")
    assert report.warnings == [expected] and _said(caplog, expected) == 1
    assert not [r for r in caplog.records if SINGULAR in r.getMessage()]
    merged, inputs = load_file(out / "model.safetensors"), [load_file(f / "model.safetensors") for f in fulls]
    name = "model.layers.0.self_attn.q_proj.weight"
    mean = (inputs[0][name] + inputs[1][name]) / 2
    assert torch.allclose(merged[name][:, :2], mean[:, :2], atol=1e-6) and merged[name][:, :2].any()
    assert not torch.allclose(merged[name][:, 2:], mean[:, 2:], atol=1e-4)


def test_a_lora_regmean_says_once_of_modules_with_unseen_input_features(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    base = _with_dead_inputs(save_tiny_base(tmp_path / "tiny"), tmp_path / "base")
    loras = [save_tiny_lora(base, tmp_path / f"lora{i}", seed=i, targets=("q_proj", "up_proj")) for i in range(2)]
    with caplog.at_level(logging.WARNING):
        report = merge_checkpoints(records(loras, base), MergeConfig(method="regmean", lora_rank=16),
                                   tmp_path / "out", base_model_dir=base, calibration_batches=calibration_batches(base))
    expected = ("1 adapted weights have input features the calibration batches never made non-zero (e.g. "
                "model.layers.0.self_attn.q_proj.weight: 2 of 32): their ΔW's columns for those features keep the "
                "weighted mean, which RegMean has nothing to weigh by")
    assert report.warnings == [expected] and _said(caplog, expected) == 1
    assert not [r for r in caplog.records if SINGULAR in r.getMessage()]
    merged, inputs = adapter_deltas(tmp_path / "out"), [adapter_deltas(p) for p in loras]
    module = "base_model.model.model.layers.0.self_attn.q_proj"  # rank 16 holds the merged ΔW exactly
    mean = (inputs[0][module] + inputs[1][module]) / 2
    # the first layer's inputs are the base's in either checkpoint: its seen columns are the mean too, the unseen
    # ones were 0
    assert torch.allclose(merged[module][:, :2], mean[:, :2], atol=1e-5) and mean[:, :2].any()


def test_a_feature_seen_faintly_in_fp16_grams_is_seen() -> None:
    """A small weight times a small fp16 diagonal rounded to 0 in fp16, and the feature's columns took the mean."""
    from mashup.merging.regmean import unseen_features

    gram = torch.diag(torch.tensor([1.0, 1e-4, 1.0, 1.0])).half()
    assert not unseen_features([gram, gram], [1e-4, 1e-4]).any()
