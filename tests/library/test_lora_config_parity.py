"""adapter_config.json flags read as PEFT 0.21 reads them: by truth value, so 0, 1 and other numbers register as the
false and true PEFT takes them for, while a string (which PEFT takes as true, "false" too) is refused in one line."""

import pytest
import torch

from mashup.library import Library
from mashup.library.records import check_lora_dir
from tests.library.helpers import noisy_copy, refused

FLAGS = ("fan_in_fan_out", "inference_mode", "use_rslora", "use_dora", "lora_bias")


@pytest.mark.parametrize("value", [0, 1, 2, 1.0])
@pytest.mark.parametrize("field", FLAGS)
def test_a_number_flag_registers_as_the_bool_peft_takes_it_for(tmp_path, tiny_loras, field, value):
    adapter = noisy_copy(tiny_loras[0], tmp_path / "a", seed=1, **{field: value})
    (record,) = Library(tmp_path / "lib").add([adapter])
    assert check_lora_dir(adapter)
    assert record.use_rslora == (field == "use_rslora" and bool(value))
    assert record.use_dora == (field == "use_dora" and bool(value))  # recorded as with true: merges refuse it
    assert record.lora_scale == pytest.approx(8 / (4 ** 0.5 if record.use_rslora else 4))


@pytest.mark.parametrize("value", ["true", "false", "no", "", [1]])
@pytest.mark.parametrize("field", FLAGS)
def test_a_flag_that_is_no_bool_or_number_is_refused_in_one_line(tmp_path, tiny_loras, field, value):
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, **{field: value})
    error = refused(Library(tmp_path / "lib"), [bad],
                    rf"field '{field}' is .*, expected true or false \(or a number: 0 is false\)")
    assert error.where == str(bad / "adapter_config.json") and f"fix '{field}'" in error.fix


def test_lora_bias_2_is_checked_as_true_against_the_settings_peft_refuses_it_with(tmp_path, tiny_loras):
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, lora_bias=2, use_dora=1)
    refused(Library(tmp_path / "lib"), [bad], "sets lora_bias true with use_dora, which PEFT refuses to load")


def test_dora_given_as_1_is_kept_out_of_merges_as_dora_given_as_true(tmp_path, tiny_loras):
    from mashup.library.compat import incompatibility

    plain, dora = Library(tmp_path / "lib").add([noisy_copy(tiny_loras[0], tmp_path / "a", seed=1),
                                                 noisy_copy(tiny_loras[0], tmp_path / "d", seed=2, use_dora=1)])
    assert incompatibility(dora, plain, plain.base_model, "lora") == "DoRA adapters are not supported for merging"


def test_peft_loads_number_flags_as_bools_and_a_string_false_as_true(tmp_path, tiny_base, tiny_loras):
    """What the checks above take from PEFT itself: 2 and 1 load as true, 0 as false, and the string "false" as
    true (why strings are refused); rsLoRA changes the scale, so the outputs tell."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    def logits(name: str, **fields) -> torch.Tensor:
        adapter = noisy_copy(tiny_loras[0], tmp_path / name, seed=1, **fields)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), adapter)
        with torch.no_grad():
            return model(torch.tensor([[1, 2, 3, 4]])).logits

    flags = {"fan_in_fan_out": 0, "inference_mode": 1, "use_dora": 0, "lora_bias": 0}
    rslora, plain = logits("true", use_rslora=True), logits("false", use_rslora=False)
    assert not torch.allclose(rslora, plain)
    assert torch.equal(logits("two", use_rslora=2, **flags), rslora)
    assert torch.equal(logits("one", use_rslora=1, **flags), rslora)
    assert torch.equal(logits("zero", use_rslora=0, **flags), plain)
    assert torch.equal(logits("string", use_rslora="false"), rslora)


def test_a_flag_too_large_for_a_float_registers_as_true(tmp_path, tiny_loras):
    """10**400 is a true flag to PEFT; math.isfinite cannot take it (OverflowError), which was a traceback."""
    adapter = noisy_copy(tiny_loras[0], tmp_path / "a", seed=1, use_rslora=10**400)
    (record,) = Library(tmp_path / "lib").add([adapter])
    assert record.use_rslora is True
