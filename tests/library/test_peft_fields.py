"""The adapter_config.json fields PEFT reads on load: registration refuses, with one line naming the field, a
value of the wrong type, a value PEFT fails on and an init that rewrote the base weights, accepts what PEFT
accepts, and agrees with PEFT itself on which is which."""

import pytest
import torch

from mashup.errors import CheckpointError
from mashup.library import Library
from mashup.library.lora_config import TASK_TYPES, changes_base, is_lora_init
from mashup.library.records import check_lora_dir
from tests.library.helpers import noisy_copy, refused


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("lora_dropout", "x", "a number from 0 to 1"), ("lora_dropout", None, "a number from 0 to 1"),
    ("lora_dropout", 1.5, "a number from 0 to 1"), ("bias", "some", 'one of "none", "all", "lora_only"'),
    ("bias", None, "one of"), ("fan_in_fan_out", "no", "true or false"), ("inference_mode", "true", "true or false"),
    ("lora_bias", "x", "true or false"), ("init_lora_weights", 5, "true, false or one of"),
    ("modules_to_save", "lm_head", "a list of module names or null"),
    ("target_parameters", "weight", "a list of parameter names or null"),
    ("layer_replication", [[0, "2"]], r"a list of \[start, end\] layer ranges"),
    ("task_type", 5, 'null or one of "SEQ_CLS"'),
])
def test_wrongly_typed_field_peft_reads_on_load_names_field_file_and_type(tmp_path, tiny_loras, field, value,
                                                                          expected):
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, **{field: value})
    error = refused(Library(tmp_path / "lib"), [bad], f"field '{field}' is .*, expected {expected}")
    assert error.where == str(bad / "adapter_config.json") and field in error.fix
    with pytest.raises(CheckpointError, match=f"field '{field}'"):  # loaded without registering (eval --adapter)
        check_lora_dir(bad)


def test_fields_peft_reads_on_load_accept_what_peft_accepts(tmp_path, tiny_loras):
    fields = {"lora_dropout": 1, "bias": "lora_only", "fan_in_fan_out": None, "init_lora_weights": "gaussian",
              "modules_to_save": [], "layer_replication": [[0, 2]], "task_type": None, "target_parameters": None}
    assert len(Library(tmp_path / "lib").add([noisy_copy(tiny_loras[0], tmp_path / "a", seed=1, **fields)])) == 1


@pytest.mark.parametrize(("field", "value"), [
    ("init_lora_weights", "kaiming"), ("init_lora_weights", "EVA"), ("init_lora_weights", "PiSSA"),
    ("init_lora_weights", "pissa_niter_x"), ("task_type", "causal_lm"), ("task_type", "CAUSAL-LM"),
])
def test_values_peft_refuses_on_load_name_dir_field_and_accepted_values(tmp_path, tiny_loras, field, value):
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, **{field: value})
    accepted = '"gaussian", "eva"' if field == "init_lora_weights" else '"CAUSAL_LM"'
    error = refused(Library(tmp_path / "lib"), [bad], f"field '{field}' is \"{value}\", expected .*{accepted}")
    assert error.where == str(bad / "adapter_config.json")


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "OLoRA", "corda", "lora_ga", "loftq"])
def test_adapters_trained_on_rewritten_base_weights_are_refused_with_how_to_convert(tmp_path, tiny_loras, init):
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, init_lora_weights=init)
    error = refused(Library(tmp_path / "lib"), [bad], f"field 'init_lora_weights' is \"{init}\": the adapter was "
                    "trained on rewritten base weights")
    assert error.where == str(bad / "adapter_config.json")
    assert ("base PEFT saved with it" if init == "loftq" else "path_initial_model_for_weight_conversion") in error.fix


@pytest.mark.parametrize(("field", "value"), [
    ("init_lora_weights", "eva"), ("init_lora_weights", "orthogonal"), ("init_lora_weights", "Gaussian"),
    ("init_lora_weights", "mica"), ("init_lora_weights", False), ("task_type", "SEQ_2_SEQ_LM"),
])
def test_values_peft_takes_on_load_are_accepted(tmp_path, tiny_loras, field, value):
    assert len(Library(tmp_path / "lib").add([noisy_copy(tiny_loras[0], tmp_path / "a", seed=1, **{field: value})]))


def test_init_and_task_type_checks_agree_with_peft():
    """PEFT itself decides: building a LoRA layer runs the init PEFT runs on load; the config checks task_type."""
    from peft.utils.peft_types import TaskType

    assert TASK_TYPES == tuple(t.value for t in TaskType)
    for value in [True, False, None, "", "gaussian", "Gaussian", "eva", "EVA", "olora", "OLoRA", "pissa",
                  "pissa_niter_4", "pissa_niter_x", "PiSSA", "pissa_x", "mica", "orthogonal", "Orthogonal", "kaiming"]:
        assert is_lora_init(value) == peft_layer_takes(value), value


def test_peft_type_is_read_as_written(tmp_path, tiny_loras):
    """PEFT looks the type up case-sensitively: "lora" fails there with a KeyError."""
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, peft_type="lora")
    assert refused(Library(tmp_path / "lib"), [bad], "peft_type is 'lora', only \"LORA\" is supported").where == \
        str(bad)


def test_the_inits_refused_for_changing_the_base_do_so_in_peft():
    """Building a LoRA layer runs the init PEFT runs as training starts (LoRA-GA given its gradients) and, but for
    LoRA-GA, on load: the inits refused rewrite the base weight, the inits accepted leave it."""
    from peft import LoraConfig, LoraGAConfig
    from peft.tuners.lora.layer import Linear

    for value in ["pissa", "pissa_niter_2", "olora", "OLoRA", "lora_ga", "gaussian", "eva", "orthogonal", "mica",
                  True, False]:
        torch.manual_seed(0)
        base = torch.nn.Linear(4, 4)
        base._peft_loraga_grad = torch.randn(4, 4)  # what LoRA-GA's preprocessing leaves on each layer
        before = base.weight.detach().clone()
        extra = {"lora_ga_config": LoraGAConfig()} if value == "lora_ga" else {}
        Linear(base, "default", config=LoraConfig(r=2, init_lora_weights=value, **extra), r=2, lora_alpha=2,
               init_lora_weights=value)
        assert changes_base(value) == (not torch.equal(base.weight, before)), value


@pytest.mark.parametrize(("fields", "said"), [
    ({"lora_bias": True, "init_lora_weights": "gaussian"}, 'init_lora_weights "gaussian"'),
    ({"lora_bias": True, "init_lora_weights": None}, "init_lora_weights null"),
    ({"lora_bias": True, "use_dora": True}, "use_dora"),
])
def test_lora_bias_with_settings_peft_refuses_is_refused(tmp_path, tiny_loras, fields, said):
    from peft import LoraConfig

    with pytest.raises(ValueError):
        LoraConfig(r=2, target_modules=["q_proj"], **fields)
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, **fields)
    refused(Library(tmp_path / "lib"), [bad], f"sets lora_bias true with {said}, which PEFT refuses to load")


@pytest.mark.parametrize("init", ["absent", True, False])
def test_lora_bias_with_the_inits_peft_takes_is_registered(tmp_path, tiny_loras, init):
    from peft import PeftConfig

    fields = {"lora_bias": True} if init == "absent" else {"lora_bias": True, "init_lora_weights": init}
    adapter = noisy_copy(tiny_loras[0], tmp_path / "a", seed=1, **fields)
    assert PeftConfig.from_pretrained(adapter).lora_bias
    assert len(Library(tmp_path / "lib").add([adapter])) == 1


@pytest.mark.parametrize("fields", [{"init_lora_weights": 0}, {"lora_bias": 0}, {"lora_bias": 1},
                                    {"lora_bias": 1, "init_lora_weights": 0}, {"lora_bias": 1.0}])
def test_0_and_1_spelling_false_and_true_are_registered_as_peft_takes_them(tmp_path, tiny_loras, fields):
    adapter = noisy_copy(tiny_loras[0], tmp_path / "a", seed=1, **fields)
    assert len(Library(tmp_path / "lib").add([adapter])) == 1
    assert check_lora_dir(adapter)


@pytest.mark.parametrize("init", [1, 2, 0.5, -1])
def test_a_number_init_but_0_is_refused_saying_peft_fails_to_load_it(tmp_path, tiny_loras, init):
    bad = noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, init_lora_weights=init)
    error = refused(Library(tmp_path / "lib"), [bad], f"field 'init_lora_weights' is {init}, expected true, false or "
                    "one of .*: PEFT takes 0 as false, and fails to load any other number")
    assert error.where == str(bad / "adapter_config.json") and "init_lora_weights" in error.fix


@pytest.mark.parametrize(("fields", "said"), [
    ({"lora_bias": 2, "init_lora_weights": "gaussian"}, 'sets lora_bias true with init_lora_weights "gaussian"'),
    ({"lora_bias": 1, "init_lora_weights": "gaussian"}, 'sets lora_bias true with init_lora_weights "gaussian"'),
    ({"lora_bias": 1, "use_dora": True}, "sets lora_bias true with use_dora"),
])
def test_lora_bias_1_is_checked_as_true(tmp_path, tiny_loras, fields, said):
    refused(Library(tmp_path / "lib"), [noisy_copy(tiny_loras[0], tmp_path / "bad", seed=1, **fields)], said)


def test_0_and_1_load_in_peft_as_false_and_true_and_a_number_init_but_0_fails(tmp_path, tiny_base, tiny_loras):
    """What the checks above take from PEFT itself: an adapter whose config has 0 and 1 for init_lora_weights and
    lora_bias loads as the one with false and true (the same model, its lora_B bias made or not), and
    init_lora_weights 1 fails to load, as every number but 0 fails to build a LoRA layer."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    def loaded(name: str, **fields) -> tuple[torch.Tensor, bool]:
        adapter = noisy_copy(tiny_loras[0], tmp_path / name, seed=1, **fields)
        torch.manual_seed(0)  # lora_bias makes a lora_B bias this adapter does not store: PEFT inits it randomly
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), adapter)
        with torch.no_grad():
            logits = model(torch.tensor([[1, 2, 3, 4]])).logits
        return logits, model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].bias is not None

    for ints, bools in [((0, 1), (False, True)), ((0, 0), (False, False))]:
        (logits, bias), (expected, expected_bias) = [loaded(f"{init}-{bias}", init_lora_weights=init, lora_bias=bias)
                                                     for init, bias in (ints, bools)]
        assert torch.equal(logits, expected) and bias == expected_bias == bool(ints[1])
    with pytest.raises(AttributeError, match="no attribute 'lower'"):
        loaded("1", init_lora_weights=1)
    for value in [0, 0.0, 1, 2, 0.5]:
        assert is_lora_init(value) == peft_layer_takes(value), value


def peft_layer_takes(init) -> bool:
    """Whether PEFT builds a LoRA layer with ``init`` as init_lora_weights, running the init it runs on load (an
    unknown name fails with a ValueError, a number but 0 with an AttributeError)."""
    from peft import LoraConfig
    from peft.tuners.lora.layer import Linear

    try:
        Linear(torch.nn.Linear(4, 4), "default", config=LoraConfig(r=2, init_lora_weights=init), r=2, lora_alpha=2)
    except (ValueError, AttributeError):
        return False
    return True


def test_fields_left_out_take_pefts_defaults(tmp_path, tiny_loras):
    """An adapter_config.json without r or lora_alpha: PEFT applies its LoraConfig defaults on load (alpha 8, not
    r), so the record's scale is the one PEFT applies."""
    import dataclasses
    import json

    from peft import LoraConfig

    from mashup.library.lora_config import PEFT_DEFAULTS

    assert PEFT_DEFAULTS == {f.name: f.default for f in dataclasses.fields(LoraConfig) if f.name in PEFT_DEFAULTS}
    adapter = noisy_copy(tiny_loras[0], tmp_path / "a", seed=1)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4
    (adapter / "adapter_config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "lora_alpha"}))
    (record,) = Library(tmp_path / "lib").add([adapter])
    assert record.lora_alpha == 8 and record.lora_scale == 2


def test_a_record_registered_with_r_for_a_missing_alpha_says_why_it_is_stale(tmp_path, tiny_loras):
    """Before PEFT's default was read, a missing lora_alpha registered as r: such a record is stale, and says so
    rather than blaming an edit."""
    import json

    from mashup.library.records import lora_config_change

    adapter = noisy_copy(tiny_loras[0], tmp_path / "a", seed=1)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "lora_alpha"}))
    (record,) = Library(tmp_path / "lib").add([adapter])
    record.lora_alpha = float(record.lora_r)  # as registered before
    assert "which mashup reads as PEFT does (8, its default) where the entry holds r (4)" in lora_config_change(record)
