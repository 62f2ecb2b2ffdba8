"""LoRA merges: ab, delta and concat modes, references, round trips through PEFT, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mashup.config import MergeConfig
from mashup.errors import MergeError
from mashup.merging import merge_checkpoints
from mashup.merging.lora import base_weight_name, load_adapter
from tests.merging.helpers import adapter_logits, logits_with_deltas, records, sample_inputs
from tests.tiny import save_tiny_lora

WEIGHTS = "adapter_model.safetensors"


def hand_deltas(paths: list[Path], weights: list[float], scale: float) -> dict[str, torch.Tensor]:
    """Σ w_i·s·B_i·A_i per target weight, computed directly from the files."""
    tensors = [load_adapter(p) for p in paths]
    out: dict[str, torch.Tensor] = {}
    for name in tensors[0]:
        if ".lora_A." in name:
            module = name.split(".lora_A.")[0]
            out[base_weight_name(module)] = sum(
                w * scale * (t[f"{module}.lora_B.weight"] @ t[name]) for w, t in zip(weights, tensors))
    return out


def test_ab_average_is_the_mean_of_a_and_b(tiny_loras: list[Path], tmp_path: Path) -> None:
    report = merge_checkpoints(records(tiny_loras[:2]), MergeConfig(), tmp_path / "out")
    merged = load_file(tmp_path / "out" / WEIGHTS)
    first, second = load_adapter(tiny_loras[0]), load_adapter(tiny_loras[1])
    assert merged.keys() == first.keys()
    for name, tensor in merged.items():
        assert torch.allclose(tensor, (first[name] + second[name]) / 2, atol=1e-7)
    assert report.lora_mode == "ab" and report.weights == [0.5, 0.5] and report.checkpoint_ids == ["ckpt0", "ckpt1"]
    saved = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert saved["method"] == "average" and (tmp_path / "out" / "merge_config.yaml").exists()


def test_merged_adapter_round_trips_through_peft(tiny_base: Path, tiny_loras: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    merge_checkpoints(records(tiny_loras), MergeConfig(method="ties", density=0.5), out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_base) and config["r"] == 4
    inputs = sample_inputs(tiny_base)
    by_hand = logits_with_deltas(tiny_base, hand_deltas([out], [1.0], 2.0), inputs)
    assert torch.allclose(adapter_logits(tiny_base, out, inputs), by_hand, atol=1e-5)


def test_delta_mode_is_exact_when_the_merge_has_rank_at_most_r(tiny_loras: list[Path], tmp_path: Path) -> None:
    # Two copies of one adapter: the averaged ΔW has rank 4 = r, so the SVD loses nothing.
    report = merge_checkpoints(records([tiny_loras[0], tiny_loras[0]]), MergeConfig(lora_mode="delta"),
                               tmp_path / "out")
    assert report.svd_relative_error is not None and report.svd_relative_error < 1e-6
    exact, merged = hand_deltas([tiny_loras[0]], [1.0], 2.0), hand_deltas([tmp_path / "out"], [1.0], 2.0)
    for name in exact:
        assert torch.allclose(merged[name], exact[name], atol=1e-5)


def test_delta_mode_reports_the_truncation_error(tiny_loras: list[Path], tmp_path: Path) -> None:
    report = merge_checkpoints(records(tiny_loras[:2]), MergeConfig(lora_mode="delta"), tmp_path / "out")
    exact = hand_deltas(tiny_loras[:2], [0.5, 0.5], 2.0)
    name = sorted(exact)[0]
    singular = torch.linalg.svdvals(exact[name].double())
    expected = float((singular[4:] ** 2).sum().sqrt() / (singular**2).sum().sqrt())
    module = "base_model.model." + name.removesuffix(".weight")
    assert report.svd_module_errors[module] == pytest.approx(expected, rel=1e-4)
    assert 0.05 < report.svd_relative_error < 1.0  # type: ignore[operator]
    merged = hand_deltas([tmp_path / "out"], [1.0], 2.0)
    assert float((merged[name] - exact[name]).norm() / exact[name].norm()) == pytest.approx(expected, rel=1e-3)


def test_concat_logits_equal_the_exact_delta_average(tiny_base: Path, tiny_loras: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    merge_checkpoints(records(tiny_loras), MergeConfig(lora_mode="concat", weights=[0.2, 0.3, 0.5]), out)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 12
    inputs = sample_inputs(tiny_base)
    exact = logits_with_deltas(tiny_base, hand_deltas(tiny_loras, [0.2, 0.3, 0.5], 2.0), inputs)
    assert torch.allclose(adapter_logits(tiny_base, out, inputs), exact, atol=1e-5)


def test_concat_refuses_nonlinear_methods(tiny_loras: list[Path], tmp_path: Path) -> None:
    with pytest.raises(MergeError, match="concat only supports average/task_arithmetic"):
        merge_checkpoints(records(tiny_loras[:2]), MergeConfig(method="ties", lora_mode="concat"), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_task_vectors_use_the_init_reference(tiny_loras: list[Path], tmp_path: Path) -> None:
    recs = records(tiny_loras[:2])
    for record in recs:
        record.init_reference = str(tiny_loras[2])
    merge_checkpoints(recs, MergeConfig(method="task_arithmetic"), tmp_path / "out")
    ref, x1, x2 = (load_adapter(p) for p in (tiny_loras[2], tiny_loras[0], tiny_loras[1]))
    merged = load_file(tmp_path / "out" / WEIGHTS)
    for name, tensor in merged.items():
        assert torch.allclose(tensor, ref[name] + (x1[name] - ref[name]) + (x2[name] - ref[name]), atol=1e-6)


def test_zero_reference_is_warned_about(tiny_loras: list[Path], tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    report = merge_checkpoints(records(tiny_loras[:2]), MergeConfig(method="task_arithmetic"), tmp_path / "out")
    assert any("zero adapter" in w for w in report.warnings)
    assert "zero adapter" in caplog.text
    merged, x1, x2 = load_file(tmp_path / "out" / WEIGHTS), load_adapter(tiny_loras[0]), load_adapter(tiny_loras[1])
    name = next(iter(merged))
    assert torch.allclose(merged[name], x1[name] + x2[name])


def test_ab_mode_refuses_rank_scale_and_target_mismatches(tiny_base: Path, tiny_loras: list[Path],
                                                          tmp_path: Path) -> None:
    rank8 = save_tiny_lora(tiny_base, tmp_path / "r8", seed=5, r=8)
    with pytest.raises(MergeError, match="LoRA rank .*ckpt1 has 8, ckpt0 has 4.*use lora_mode delta or concat"):
        merge_checkpoints(records([tiny_loras[0], rank8]), MergeConfig(lora_mode="ab"), tmp_path / "a")
    other = save_tiny_lora(tiny_base, tmp_path / "qk", seed=6, targets=("q_proj", "k_proj"))
    with pytest.raises(MergeError, match="target modules"):
        merge_checkpoints(records([tiny_loras[0], other]), MergeConfig(lora_mode="ab"), tmp_path / "b")
    recs = records(tiny_loras[:2])
    recs[1].use_rslora = True
    with pytest.raises(MergeError, match="LoRA scale .*rsLoRA.*fold each adapter's scale"):
        merge_checkpoints(recs, MergeConfig(lora_mode="ab"), tmp_path / "c")
    assert not any((tmp_path / d).exists() for d in "abc")


def test_concat_fills_each_missing_block_with_its_own_rows(tiny_base: Path, tiny_loras: list[Path],
                                                           tmp_path: Path) -> None:
    """Equal filler rows would get equal gradients and stay equal: part of the rank would never train."""
    k_proj = save_tiny_lora(tiny_base, tmp_path / "k", seed=5, targets=("q_proj", "k_proj"))
    paths = [tiny_loras[0], tiny_loras[1], k_proj]  # only the third adapts k_proj
    config = MergeConfig(method="average", lora_mode="concat", seed=3)
    merge_checkpoints(records(paths), config, tmp_path / "out")
    merge_checkpoints(records(paths), config, tmp_path / "again")
    name = "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"
    a, again = load_file(tmp_path / "out" / WEIGHTS)[name], load_file(tmp_path / "again" / WEIGHTS)[name]
    assert torch.equal(a, again)  # deterministic for a seed
    assert not torch.equal(a[0:4], a[4:8])
    assert int(torch.linalg.matrix_rank(a[:8].double())) == 8
