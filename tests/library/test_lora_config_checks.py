"""Registration refuses an adapter whose factors PEFT would not all load as its adapter_config.json says (factors of
modules exclude_modules excludes, in layers layers_pattern finds no index in, or outside the targets PEFT picks for
a null target_modules), and configs PEFT refuses to load; each with one line naming the dir and the field."""

import json
import re
import shutil

import pytest
from safetensors.torch import load_file, save_file

from mashup.errors import CheckpointError
from mashup.library import Library
from mashup.library.lora_config import lora_base_difference
from tests.library.helpers import noisy_copy

ADAPTER = "adapter_model.safetensors"


def _refused(tmp_path, adapter, match: str) -> CheckpointError:
    library = Library(tmp_path / "lib")
    with pytest.raises(CheckpointError, match=match) as caught:
        library.add([adapter])
    assert "\n" not in str(caught.value) and library.list() == []
    return caught.value


def _accepted(tmp_path, adapter) -> None:
    assert len(Library(tmp_path / adapter.name).add([adapter])) == 1


def _without(adapter, module: str):
    tensors = load_file(adapter / ADAPTER)
    save_file({name: t for name, t in tensors.items() if module not in name}, adapter / ADAPTER)
    return adapter


@pytest.mark.parametrize("excluded", [["up_proj"], ["layers.1.mlp.up_proj"], r".*\.\d\.mlp\.up_proj"])
def test_factors_of_excluded_modules_are_refused(tmp_path, tiny_loras, excluded):
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, exclude_modules=excluded)
    error = _refused(tmp_path, bad, r"adapts module 'model\.layers\.\d\.mlp\.up_proj', which exclude_modules "
                                    r".* in adapter_config\.json excludes \(PEFT would drop it on load\)")
    assert error.where == str(bad) and error.fix == "fix exclude_modules or re-save the adapter"


@pytest.mark.parametrize("excluded", [["k_proj"], r".*\.k_proj", [], None])
def test_exclude_modules_excluding_no_adapted_module_are_accepted(tmp_path, tiny_loras, excluded):
    _accepted(tmp_path, noisy_copy(tiny_loras[0], tmp_path / "a", seed=1, exclude_modules=excluded))


def test_layers_pattern_finds_the_layer_index_as_in_peft(tmp_path, tiny_loras):
    wrong = noisy_copy(tiny_loras[0], tmp_path / "wrong", seed=1, layers_to_transform=[0, 1], layers_pattern="blocks")
    error = _refused(tmp_path, wrong, r"in which layers_pattern \[\"blocks\"\] in adapter_config\.json finds no "
                                      r"layer index \(PEFT would drop it on load\)")
    assert error.where == str(wrong) and "fix layers_pattern" in error.fix
    narrowed = noisy_copy(tiny_loras[0], tmp_path / "narrowed", seed=2, layers_to_transform=[0],
                          layers_pattern=["blocks", "layers"])
    _refused(tmp_path, narrowed, r"is in layer 1, which layers_to_transform \[0\]")
    for i, fitting in enumerate([{"layers_to_transform": [0, 1], "layers_pattern": "layers"},
                                 {"layers_to_transform": 1, "target_modules": ["model.layers.0.self_attn.q_proj",
                                                                               "model.layers.0.self_attn.v_proj",
                                                                               "model.layers.0.mlp.up_proj", "q_proj",
                                                                               "v_proj", "up_proj"]},
                                 {"layers_to_transform": []}, {"layers_to_transform": [], "layers_pattern": ""}]):
        _accepted(tmp_path, noisy_copy(tiny_loras[0], tmp_path / f"fits{i}", seed=3 + i, **fitting))


@pytest.mark.parametrize(("fields", "match"), [
    ({"layers_pattern": "layers"}, r"layers_pattern \"layers\" in adapter_config\.json needs layers_to_transform"),
    ({"layers_to_transform": [0], "target_modules": r".*\.q_proj"},
     "layers_to_transform in adapter_config.json cannot narrow a target_modules string"),
    ({"layers_pattern": "layers", "layers_to_transform": 0, "target_modules": "all-linear"},
     "layers_to_transform in adapter_config.json cannot narrow a target_modules string"),
])
def test_layer_fields_peft_refuses_to_load_are_refused(tmp_path, tiny_loras, fields, match):
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, **fields)
    assert _refused(tmp_path, bad, match).where == str(bad)


def test_null_target_modules_are_matched_against_peft_defaults_for_the_base(tmp_path, tiny_base, tiny_loras):
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, target_modules=None)  # q, v and up_proj factors
    error = _refused(tmp_path, bad, r"adapts module 'model\.layers\.0\.mlp\.up_proj', which PEFT's default "
                                    r"target_modules \[\"q_proj\", \"v_proj\"\] for model_type 'llama' \(target_modules"
                                    r" is null in adapter_config\.json\) does not cover")
    assert error.where == str(bad) and "fix target_modules" in error.fix
    _accepted(tmp_path, _without(noisy_copy(tiny_loras[0], tmp_path / "qv", seed=2, target_modules=None), "up_proj"))
    elsewhere = noisy_copy(tiny_loras[0], tmp_path / "elsewhere", seed=3, target_modules=None,
                           base_model_name_or_path="mashup-tests/not-in-any-cache")
    _accepted(tmp_path, elsewhere)  # the base is not at hand: left to loading


def test_null_target_modules_on_a_model_type_peft_has_no_default_for_are_refused(tmp_path, tiny_base, tiny_loras):
    base = shutil.copytree(tiny_base, tmp_path / "base")
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "model_type": "mashup-unknown"}))
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, target_modules=None, base_model_name_or_path=str(base))
    error = _refused(tmp_path, bad, "target_modules is null in adapter_config.json and PEFT has no default targets "
                                    f"for model_type 'mashup-unknown' of base '{base}'")
    assert error.where == str(bad)


@pytest.mark.parametrize("targets", [[], ""])
def test_empty_target_modules_are_refused(tmp_path, tiny_loras, targets):
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, target_modules=targets)
    error = _refused(tmp_path, bad, r"target_modules (\[\]|\"\") in adapter_config\.json names no module")
    assert error.where == str(bad)


@pytest.mark.parametrize(("field", "value"), [
    ("exclude_modules", 5), ("layers_to_transform", "0"), ("layers_to_transform", [0, "1"]), ("layers_pattern", 3),
])
def test_wrongly_typed_narrowing_field_names_field_and_file(tmp_path, tiny_loras, field, value):
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, **{field: value})
    error = _refused(tmp_path, bad, f"adapter_config.json field '{field}' is .*, expected")
    assert error.where == str(bad / "adapter_config.json")


@pytest.mark.parametrize("field", ["target_modules", "exclude_modules", "layers_pattern"])
def test_a_regex_that_does_not_compile_names_field_file_and_error(tmp_path, tiny_loras, field):
    """PEFT matches layers_pattern as part of a regex too (then failing with a bare re.error)."""
    layers = {"layers_to_transform": [0, 1]} if field == "layers_pattern" else {}
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, **{field: "(.*q_proj"}, **layers)
    expected = f"adapter_config.json field '{field}' is \"(.*q_proj\", not a valid regex (missing ), unterminated " \
               "subpattern at position 0)"
    error = _refused(tmp_path, bad, re.escape(expected))
    assert error.where == str(bad / "adapter_config.json") and field in error.fix


def test_a_layers_pattern_list_with_one_regex_that_does_not_compile_is_refused(tmp_path, tiny_loras):
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, layers_to_transform=[0, 1],
                     layers_pattern=["layers", "h["])
    error = _refused(tmp_path, bad, re.escape("field 'layers_pattern' is [\"layers\", \"h[\"], not a valid regex"))
    assert error.where == str(bad / "adapter_config.json") and "layers_pattern" in error.fix


@pytest.mark.parametrize(("base", "difference"), [
    ({"m.weight": [64, 32]}, None), ({"m.weight": [32, 64]}, None),  # a Linear; a Conv1D stores (in, out)
    ({"other.weight": [8, 8]}, None), ({"m.weight": [64, 32, 1, 1]}, None),  # left to loading
    ({"m.weight": [64, 48]}, "tensor base_model.model.m.lora_A.weight has shape [4, 32], which does not fit the "
                             "base's m.weight [64, 48]"),
    ({"m.weight": [48, 32]}, "tensor base_model.model.m.lora_B.weight has shape [64, 4], which does not fit the "
                             "base's m.weight [48, 32]"),
])
def test_lora_factors_are_fitted_to_the_base_module_in_either_orientation(base, difference):
    factors = {"base_model.model.m.lora_A.weight": [4, 32], "base_model.model.m.lora_B.weight": [64, 4]}
    assert lora_base_difference(factors, base) == difference
