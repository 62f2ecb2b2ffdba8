"""Bad checkpoints refused at registration with one line (what, where, how to fix), the catalog unchanged;
full fine-tunes matched against their base's tensors. The fields PEFT reads on load:
tests/library/test_peft_fields.py."""

import dataclasses
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mashup.errors import CheckpointError
from mashup.io import check_finite
from mashup.library import Library, partition_compatible
from tests.library.helpers import noisy_copy, refused

ADAPTER = "adapter_model.safetensors"
MODEL = "model.safetensors"


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
    error = refused(Library(tmp_path / "lib"), [tiny_fulls[1], full], "cannot read weights", base=str(tiny_base))
    assert error.where == str(full / MODEL) and "re-download" in error.fix
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        check_finite([full / MODEL])


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("r", None, "a positive integer"), ("r", "abc", "a positive integer"), ("r", 0, "a positive integer"),
    ("lora_alpha", "x", "a non-zero number"), ("lora_alpha", 0, "a non-zero number"),
    ("target_modules", 5, "a list of module names"),
    ("target_modules", ["q_proj", 3], "a list of module names"), ("use_rslora", "yes", "true or false"),
])
def test_wrongly_typed_adapter_config_field_names_field_file_and_type(tmp_path, tiny_loras, field, value, expected):
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, **{field: value})
    error = refused(Library(tmp_path / "lib"), [tiny_loras[1], bad], f"field '{field}' is .*, expected {expected}")
    assert error.where == str(bad / "adapter_config.json")


def test_lora_tensors_outside_target_modules_are_refused(tmp_path, tiny_loras):
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, target_modules=["k_proj"])
    error = refused(Library(tmp_path / "lib"), [tiny_loras[1], bad], r"adapts module 'model\.layers\.0\..*"
                    r"which target_modules \[\"k_proj\"\]")
    assert error.where == str(bad)
    regex = noisy_copy(tiny_loras[0], tmp_path / "regex", seed=2, target_modules=r".*\.(k_proj|o_proj)")
    refused(Library(tmp_path / "lib"), [regex], "does not cover")


def test_lora_tensors_outside_layers_to_transform_are_refused(tmp_path, tiny_loras):
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, layers_to_transform=[0])  # tensors in layers 0 and 1
    refused(Library(tmp_path / "lib"), [tiny_loras[1], bad], r"is in layer 1, which layers_to_transform \[0\]")
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
    error = refused(Library(tmp_path / "lib"), [tiny_loras[1], bad], f"tensor {first} is not floating point")
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
    error = refused(Library(tmp_path / "lib"), [tiny_fulls[1], bad], match, base=str(tiny_base))
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


def _not_a_model_dir(tmp_path, kind: str) -> str:
    """A --base that names no model dir: ``kind`` says how."""
    if kind == "file":
        (tmp_path / "base.safetensors").write_bytes(b"")
        return str(tmp_path / "base.safetensors")
    if kind == "missing":
        return str(tmp_path / "no-such-base")
    (tmp_path / "base").mkdir()
    if kind == "bad config":
        (tmp_path / "base" / "config.json").write_text("{not json")
    elif kind == "no weights":
        (tmp_path / "base" / "config.json").write_text('{"model_type": "llama"}')
    return str(tmp_path / "base")


@pytest.mark.parametrize(("kind", "match"), [
    ("missing", "base model not found"), ("file", "base model is a file, not a model dir"),
    ("empty dir", "no config.json in the base model dir"),
    ("bad config", r"not a base model dir: cannot read config\.json"),
    ("no weights", r"not a base model dir: no weight files"),
])
def test_full_fine_tune_on_a_base_that_is_no_model_dir_is_refused(tmp_path, tiny_fulls, kind, match):
    base = _not_a_model_dir(tmp_path, kind)
    error = refused(Library(tmp_path / "lib"), [tiny_fulls[0]], match, base=base)
    assert error.where == base and "--base" in error.fix


@pytest.mark.parametrize("base", ["./no-such-base", "~/no-such-mashup-base", "models/base.safetensors"])
def test_full_fine_tune_on_a_missing_relative_base_is_refused_where_it_was_looked_for(tmp_path, tiny_fulls,
                                                                                      monkeypatch, base):
    monkeypatch.chdir(tmp_path)
    error = refused(Library(tmp_path / "lib"), [tiny_fulls[0]], "base model not found", base=base)
    assert error.where == str(Path(base).expanduser().absolute())


def test_full_fine_tune_on_an_unknown_base_name_is_refused_naming_the_named_models(tmp_path, tiny_fulls):
    error = refused(Library(tmp_path / "lib"), [tiny_fulls[0]], "unknown base model 'smollm2-13m': not a named "
                    "model, a local model dir or a Hub id", base="smollm2-13m")
    assert "smollm2-135m" in error.fix


def test_full_fine_tune_on_a_named_model_or_hub_id_not_at_hand_is_registered(tmp_path, tiny_fulls, monkeypatch):
    """Not converted, not in the HF cache: nothing is downloaded, the identity stays unresolved."""
    monkeypatch.setenv("MASHUP_CACHE", str(tmp_path / "cache"))
    library = Library(tmp_path / "lib")
    named, hub = library.add([tiny_fulls[0]], base="smollm2-135m") + library.add([tiny_fulls[1]], base="org/model")
    assert (named.base_model, named.base_identity, hub.base_model) == ("smollm2-135m", None, "org/model")


def _factors(tensors, part: str, module: str = ""):
    return [n for n in sorted(tensors) if f".{part}." in n and module in n]


def _wider_inputs(tensors):
    for name in _factors(tensors, "lora_A"):
        tensors[name] = torch.zeros(tensors[name].shape[0], 48)


def _wider_up_proj_output(tensors):
    name = _factors(tensors, "lora_B", "up_proj")[0]
    tensors[name] = torch.zeros(96, tensors[name].shape[1])


@pytest.mark.parametrize(("edit", "factor", "shape"), [(_wider_inputs, "lora_A", "[4, 48]"),
                                                      (_wider_up_proj_output, "lora_B", "[96, 4]")])
def test_lora_for_other_module_sizes_than_its_base_on_disk_is_refused(tmp_path, tiny_base, tiny_loras, edit, factor,
                                                                      shape):
    bad = _edit_tensors(noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1), ADAPTER, edit)
    match = re.escape(f"tensor base_model.model.model.layers.0.mlp.up_proj.{factor}.weight has shape {shape}, which "
                      "does not fit the base's model.layers.0.mlp.up_proj.weight [64, 32]")
    error = refused(Library(tmp_path / "lib"), [tiny_loras[1], bad], match + re.escape(f": not an adapter of base "
                                                                                         f"'{tiny_base}'"))
    assert error.where == str(bad) and "--base" in error.fix
    refused(Library(tmp_path / "lib"), [bad], match, base=str(tiny_base))


def test_lora_whose_base_is_not_on_disk_is_left_to_loading(tmp_path, tiny_loras):
    other = noisy_copy(tiny_loras[0], tmp_path / "other", seed=1, base_model_name_or_path="some-org/not-local")
    assert len(Library(tmp_path / "lib").add([_edit_tensors(other, ADAPTER, _wider_inputs)])) == 1
