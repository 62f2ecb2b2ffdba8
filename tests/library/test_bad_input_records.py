"""Bad checkpoints refused at registration with one line (what, where, how to fix), the catalog unchanged;
full fine-tunes matched against their base's tensors."""

import dataclasses
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mashup.errors import CheckpointError
from mashup.io import check_finite
from mashup.library import Library, partition_compatible
from tests.library.helpers import noisy_copy

ADAPTER = "adapter_model.safetensors"
MODEL = "model.safetensors"


def _refused(library: Library, paths, match: str, **kwargs) -> CheckpointError:
    """``library.add(paths)`` raises a one-line CheckpointError and registers nothing."""
    with pytest.raises(CheckpointError, match=match) as caught:
        library.add(paths, **kwargs)
    assert "\n" not in str(caught.value)
    assert library.list() == []
    return caught.value


def _edit_tensors(path, name, edit):
    tensors = load_file(path / name)
    edit(tensors)
    save_file(tensors, path / name, metadata={"format": "pt"})
    return path


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_truncated_full_model_is_one_line_naming_the_file(tmp_path, tiny_base, tiny_fulls):
    full = shutil.copytree(tiny_fulls[0], tmp_path / "full")
    _truncate(full / MODEL)
    error = _refused(Library(tmp_path / "lib"), [tiny_fulls[1], full], "cannot read weights", base=str(tiny_base))
    assert error.where == str(full / MODEL) and "re-download" in error.fix
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        check_finite([full / MODEL])


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("r", None, "a positive integer"), ("r", "abc", "a positive integer"), ("r", 0, "a positive integer"),
    ("lora_alpha", "x", "a number"), ("target_modules", 5, "a list of module names"),
    ("target_modules", ["q_proj", 3], "a list of module names"), ("use_rslora", "yes", "true or false"),
])
def test_wrongly_typed_adapter_config_field_names_field_file_and_type(tmp_path, tiny_loras, field, value, expected):
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, **{field: value})
    error = _refused(Library(tmp_path / "lib"), [tiny_loras[1], bad], f"field '{field}' is .*, expected {expected}")
    assert error.where == str(bad / "adapter_config.json")


def test_lora_tensors_outside_target_modules_are_refused(tmp_path, tiny_loras):
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, target_modules=["k_proj"])
    error = _refused(Library(tmp_path / "lib"), [tiny_loras[1], bad], r"adapts module 'model\.layers\.0\..*"
                     r"which target_modules \[\"k_proj\"\]")
    assert error.where == str(bad)
    regex = noisy_copy(tiny_loras[0], tmp_path / "regex", seed=2, target_modules=r".*\.(k_proj|o_proj)")
    _refused(Library(tmp_path / "lib"), [regex], "does not cover")


def test_lora_tensors_outside_layers_to_transform_are_refused(tmp_path, tiny_loras):
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, layers_to_transform=[0])  # tensors in layers 0 and 1
    _refused(Library(tmp_path / "lib"), [tiny_loras[1], bad], r"is in layer 1, which layers_to_transform \[0\]")
    both = noisy_copy(tiny_loras[0], tmp_path / "both", seed=2, layers_to_transform=[0, 1])
    assert len(Library(tmp_path / "lib").add([both])) == 1


@pytest.mark.parametrize("targets", [
    ["q_proj", "v_proj", "up_proj", "not_in_this_model"], ["self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj"],
    r"model\.layers\.\d+\.(self_attn\.(q|v)_proj|mlp\.up_proj)", "all-linear", "ALL-LINEAR",
])  # null and empty targets: test_lora_config_checks
def test_target_modules_covering_the_tensors_as_peft_matches_them_are_accepted(tmp_path, tiny_loras, targets):
    adapter = noisy_copy(tiny_loras[0], tmp_path / "a", seed=1, target_modules=targets)
    assert len(Library(tmp_path / "lib").add([adapter])) == 1


def test_integer_lora_tensors_are_refused(tmp_path, tiny_loras):
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1)
    first = min(load_file(bad / ADAPTER))
    _edit_tensors(bad, ADAPTER, lambda t: t.update({first: t[first].to(torch.int32)}))
    error = _refused(Library(tmp_path / "lib"), [tiny_loras[1], bad], f"tensor {first} is not floating point")
    assert error.where == str(bad / ADAPTER)


def _reshaped(tensors):
    name = next(n for n in sorted(tensors) if "q_proj" in n)
    tensors[name] = torch.zeros(tensors[name].shape[0], tensors[name].shape[1] + 1)


def _one_missing(tensors):
    del tensors[next(n for n in sorted(tensors) if "v_proj" in n)]


def _one_extra(tensors):
    tensors["model.layers.0.self_attn.z_proj.weight"] = torch.zeros(2, 2)


@pytest.mark.parametrize(("edit", "match"), [
    (_reshaped, r"q_proj.weight has shape \[32, 33\] where the base has \[32, 32\]"),
    (_one_missing, r"v_proj.weight of the base is missing"), (_one_extra, r"z_proj.weight is not in the base"),
])
def test_full_checkpoint_not_fitting_its_base_is_refused(tmp_path, tiny_base, tiny_fulls, edit, match):
    bad = _edit_tensors(shutil.copytree(tiny_fulls[0], tmp_path / "bad"), MODEL, edit)
    error = _refused(Library(tmp_path / "lib"), [tiny_fulls[1], bad], match, base=str(tiny_base))
    assert error.where == str(bad) and "--base" in error.fix


def test_full_checkpoint_saved_without_its_output_head_is_left_to_loading(tmp_path, tiny_base, tiny_fulls):
    """Savers keep or drop a tied head; whether the base ties it is known when the model is built."""
    headless = _edit_tensors(shutil.copytree(tiny_fulls[0], tmp_path / "headless"), MODEL,
                             lambda t: t.pop("lm_head.weight"))
    assert len(Library(tmp_path / "lib").add([headless], base=str(tiny_base))) == 1


def test_full_checkpoints_are_matched_against_the_base_not_the_most_common(tmp_path, tiny_base, tiny_fulls):
    """Registered before registration checked shapes (or on another base dir): the broken majority must not
    make the good one look incompatible."""
    library = Library(tmp_path / "lib")
    good, other = library.add(tiny_fulls[:2], base=str(tiny_base))
    q_name = next(n for n in sorted(good.shapes) if "q_proj" in n)
    broken = [dataclasses.replace(other, id=f"broken{i}", shapes={**other.shapes, q_name: [32, 33]})
              for i in range(2)]
    compatible, rejected = partition_compatible([good, *broken], str(tiny_base), "full")
    assert compatible == [good]
    assert [r.id for r, _ in rejected] == ["broken0", "broken1"]
    assert all(f"differ from the base's (tensor {q_name} has shape [32, 33]" in reason for _, reason in rejected)


def test_full_checkpoints_fall_back_to_the_most_common_shapes_without_a_local_base(tmp_path, tiny_fulls):
    records = Library(tmp_path / "lib").add(tiny_fulls[:2], base="some-org/not-local")
    odd = dataclasses.replace(records[0], id="odd", shapes={**records[0].shapes, "extra": [1]})
    compatible, rejected = partition_compatible([odd, *records], "some-org/not-local", "full")
    assert compatible == records and [r.id for r, _ in rejected] == ["odd"]
    assert rejected[0][1] == "parameter shapes differ (extra)"
