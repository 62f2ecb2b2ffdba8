"""Bad inputs are refused with MergeError (or a validation error) and leave no output behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from mashup.config import MergeConfig
from mashup.errors import MergeError
from mashup.merging import merge_checkpoints
from tests.merging.helpers import records


def corrupt_copy(source: Path, target: Path, name: str, value: torch.Tensor | None) -> Path:
    """A copy of a full checkpoint with one tensor replaced (value) or poisoned with NaN (None)."""
    shutil.copytree(source, target)
    tensors = load_file(target / "model.safetensors")
    if value is None:
        value = tensors[name].clone().index_fill_(0, torch.tensor([0]), float("nan"))
    tensors[name] = value
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
def test_density_outside_zero_one_is_invalid(density: float) -> None:
    with pytest.raises(ValidationError):
        MergeConfig(method="ties", density=density)


def test_nan_input_names_tensor_and_checkpoint(tiny_base: Path, tiny_fulls: list[Path], tmp_path: Path) -> None:
    bad = corrupt_copy(tiny_fulls[1], tmp_path / "bad", "model.norm.weight", None)
    out = tmp_path / "out"
    with pytest.raises(MergeError, match=r"model\.norm\.weight holds NaN.*ckpt1"):
        merge_checkpoints(records([tiny_fulls[0], bad], tiny_base), MergeConfig(), out)
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_nan_lora_input_is_refused(tiny_loras: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(tiny_loras[1], bad)
    tensors = load_file(bad / "adapter_model.safetensors")
    name = next(iter(tensors))
    tensors[name][0, 0] = float("inf")
    save_file(tensors, str(bad / "adapter_model.safetensors"))
    with pytest.raises(MergeError, match="NaN or inf"):
        merge_checkpoints(records([tiny_loras[0], bad]), MergeConfig(lora_mode="delta"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_mismatched_shapes(tiny_base: Path, tiny_fulls: list[Path], tmp_path: Path) -> None:
    bad = corrupt_copy(tiny_fulls[1], tmp_path / "bad", "model.norm.weight", torch.ones(7))
    # registering it against the base refuses it (library.records); a merge still checks what it is given
    given = records([tiny_fulls[0], bad], "org/a-base-not-on-this-machine")  # unreadable: not compared
    for record in given:
        record.base_model = str(tiny_base)
    with pytest.raises(MergeError, match=r"model\.norm\.weight has shape \[7\]"):
        merge_checkpoints(given, MergeConfig(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_more_weights_than_checkpoints_and_no_checkpoints(tiny_base: Path, tiny_fulls: list[Path],
                                                          tmp_path: Path) -> None:
    with pytest.raises(MergeError, match="3 weights given for 2 checkpoints"):
        merge_checkpoints(records(tiny_fulls[:2], tiny_base), MergeConfig(weights=[1, 1, 1]), tmp_path / "out")
    with pytest.raises(MergeError, match="no checkpoints"):
        merge_checkpoints([], MergeConfig(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_mixed_kinds_and_unknown_method(tiny_base: Path, tiny_fulls: list[Path], tiny_loras: list[Path],
                                       tmp_path: Path) -> None:
    mixed = records([tiny_fulls[0]], tiny_base) + records([tiny_loras[0]])
    with pytest.raises(MergeError, match="checkpoint kind differs"):
        merge_checkpoints(mixed, MergeConfig(), tmp_path / "out")
    with pytest.raises(MergeError, match="unknown merge method 'slerp'.*average"):
        merge_checkpoints(records(tiny_fulls[:2], tiny_base), MergeConfig(method="slerp"), tmp_path / "out")


def test_statistics_methods_need_calibration_data(tiny_base: Path, tiny_fulls: list[Path], tmp_path: Path) -> None:
    with pytest.raises(MergeError, match="calibration batches"):
        merge_checkpoints(records(tiny_fulls[:2], tiny_base), MergeConfig(method="fisher"), tmp_path / "out",
                          base_model_dir=tiny_base)
