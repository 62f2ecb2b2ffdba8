"""Bad checkpoints and base models met where eval and train load them: one CheckpointError line, nothing written."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mashup.config import DataConfig, EvalConfig, TrainConfig
from mashup.errors import CheckpointError, MashupError
from mashup.models import attach_adapter, load_model
from mashup.verbs import evaluate_model, train_model
from tests.test_cli import run_cli
from tests.tiny import copy_with_nan

DATA = {"scoring": "letter", "max_length": 128}
ADAPTER_WEIGHTS = "adapter_model.safetensors"
UNKNOWN_ARCHITECTURE = "architecture 'nonsense_arch' (model_type) is not known to the installed transformers"
CUSTOM_CODE = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"}


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _data(mc_file):
    return DataConfig(data=str(mc_file), **DATA)


def _train(tmp_path, tiny_base, mc_file, init, **kwargs):
    config = TrainConfig(**{"batch_size": 8, "max_steps": 1, "lr": 5e-3, **kwargs})
    return train_model(str(tiny_base), _data(mc_file), config, tmp_path / "out", init=init,
                       eval_config=EvalConfig(batch_size=4))


def _with_nan(path):
    tensors = load_file(path)
    first = min(tensors)
    tensors[first].view(-1)[0] = float("nan")
    save_file(tensors, path, metadata={"format": "pt"})
    return first


def _truncate(path):
    path.write_bytes(path.read_bytes()[:3000])


def _pickled(src, dst):
    adapter = _copy(src, dst)
    torch.save(load_file(adapter / ADAPTER_WEIGHTS), adapter / "adapter_model.bin")
    (adapter / ADAPTER_WEIGHTS).unlink()
    return adapter


def _eval_cli(tiny_base, mc_file, capsys, monkeypatch, *args, base=None):
    _, err = run_cli(["eval", "--base", base or tiny_base, "--data", mc_file, *args], capsys, monkeypatch, expect=1)
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    return err


def test_a_pickled_adapter_is_not_unpickled_unless_allowed(tmp_path, tiny_base, tiny_loras, mc_file, capsys,
                                                           monkeypatch):
    adapter = _pickled(tiny_loras[0], tmp_path / "bin")
    assert "refusing to unpickle" in _eval_cli(tiny_base, mc_file, capsys, monkeypatch, "--adapter", adapter)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        _train(tmp_path, tiny_base, mc_file, adapter)
    assert not (tmp_path / "out").exists()
    allowed = evaluate_model(str(tiny_base), _data(mc_file), adapter=adapter, allow_pickle=True)
    assert allowed.loss == pytest.approx(evaluate_model(str(tiny_base), _data(mc_file), adapter=tiny_loras[0]).loss)


def test_allow_pickle_still_loads_a_safetensors_model(tiny_base):
    assert load_model(tiny_base, allow_pickle=True) is not None


@pytest.mark.parametrize("where", ["adapter", "model", "base"])
def test_nan_weights_are_refused_by_eval(tmp_path, tiny_base, tiny_loras, tiny_fulls, mc_file, capsys, monkeypatch,
                                         where):
    if where == "adapter":
        broken = _copy(tiny_loras[0], tmp_path / "nan")
        name = _with_nan(broken / ADAPTER_WEIGHTS)
        err = _eval_cli(tiny_base, mc_file, capsys, monkeypatch, "--adapter", broken)
    else:
        broken = _copy(tiny_fulls[0] if where == "model" else tiny_base, tmp_path / "nan")
        name = _with_nan(broken / "model.safetensors")
        args = ["--model", broken] if where == "model" else []
        err = _eval_cli(tiny_base, mc_file, capsys, monkeypatch, *args, base=broken if where == "base" else None)
    assert f"tensor {name} holds NaN or inf" in err and str(broken) in err


def test_nan_init_is_refused_before_training(tmp_path, tiny_base, tiny_loras, mc_file):
    broken = _copy(tiny_loras[0], tmp_path / "nan")
    _with_nan(broken / ADAPTER_WEIGHTS)
    with pytest.raises(CheckpointError, match="holds NaN or inf"):  # not "training diverged"
        _train(tmp_path, tiny_base, mc_file, broken)
    assert not (tmp_path / "out").exists()


def test_truncated_weights_are_one_line(tmp_path, tiny_base, tiny_loras, tiny_fulls, mc_file, capsys, monkeypatch):
    adapter = _copy(tiny_loras[0], tmp_path / "trunc")
    _truncate(adapter / ADAPTER_WEIGHTS)
    assert "corrupt or truncated" in _eval_cli(tiny_base, mc_file, capsys, monkeypatch, "--adapter", adapter)
    full = _copy(tiny_fulls[0], tmp_path / "fulltrunc")
    _truncate(full / "model.safetensors")
    assert "corrupt or truncated" in _eval_cli(tiny_base, mc_file, capsys, monkeypatch, "--model", full)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        _train(tmp_path, tiny_base, mc_file, adapter)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):  # unchecked loads name the file as well
        attach_adapter(load_model(tiny_base), adapter, trainable=False, check_values=False)
    with pytest.raises(CheckpointError, match="model.safetensors; the file is corrupt or truncated"):
        load_model(full, check_values=False)


@pytest.mark.parametrize("targets", [["k_proj"], ["q_proj"], ["q_proj", "k_proj", "v_proj", "up_proj"]])
def test_adapter_config_that_disagrees_with_the_weights_is_refused(tmp_path, tiny_base, tiny_loras, targets):
    adapter = _copy(tiny_loras[0], tmp_path / "cfg")  # its weights: q_proj, v_proj, up_proj
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "target_modules": targets}))
    with pytest.raises(CheckpointError, match="adapter_config.json and the weights disagree"):
        attach_adapter(load_model(tiny_base), adapter, trainable=False)


def test_a_full_run_refuses_an_adapter_init_up_front(tmp_path, tiny_base, tiny_loras, tiny_fulls, mc_file):
    with pytest.raises(CheckpointError, match="cannot start a full fine-tune.*--mode lora"):
        _train(tmp_path, tiny_base, mc_file, tiny_loras[0], mode="full")
    with pytest.raises(CheckpointError, match="cannot start a LoRA run.*--mode full"):
        _train(tmp_path, tiny_base, mc_file, tiny_fulls[0])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config", ["{not json", "[1, 2]", '{"r": null, "peft_type": "LORA"}'])
def test_an_unreadable_init_adapter_config_is_one_error(tmp_path, tiny_base, tiny_loras, mc_file, config):
    adapter = _copy(tiny_loras[0], tmp_path / "cfg")
    (adapter / "adapter_config.json").write_text(config)
    with pytest.raises(CheckpointError, match="adapter_config.json"):
        _train(tmp_path, tiny_base, mc_file, adapter)


@pytest.mark.parametrize("change", [{"lora_alpha": 0}, {"lora_dropout": 1.5}])
def test_an_init_adapter_config_outside_the_train_config_ranges_is_one_error(tmp_path, tiny_base, tiny_loras,
                                                                             mc_file, change):
    adapter = _copy(tiny_loras[0], tmp_path / "cfg")
    config_path = adapter / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **change}))
    with pytest.raises(MashupError, match=f"invalid config field '{next(iter(change))}'.*adapter_config.json"):
        _train(tmp_path, tiny_base, mc_file, adapter)
    assert not (tmp_path / "out").exists()


def test_an_init_negated_through_its_alpha_trains_from_the_same_delta_w(tmp_path, tiny_base, tiny_loras, mc_file):
    """A negative lora_alpha is a legitimate task vector (the library registers it): with B negated too it is the
    same ΔW, so training starts from the same loss as from the original."""
    adapter = _copy(tiny_loras[0], tmp_path / "negated")
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "lora_alpha": -config["lora_alpha"]}))
    tensors = load_file(adapter / ADAPTER_WEIGHTS)
    save_file({k: -v if "lora_B" in k else v for k, v in tensors.items()}, adapter / ADAPTER_WEIGHTS)
    original = evaluate_model(str(tiny_base), _data(mc_file), adapter=tiny_loras[0], config=EvalConfig(batch_size=4))
    summary = _train(tmp_path, tiny_base, mc_file, adapter, eval_every=1)
    assert summary.result.curve[0].step == 0
    assert summary.result.curve[0].loss == pytest.approx(original.loss, abs=1e-5)
    assert json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())["lora_alpha"] < 0


@pytest.mark.parametrize("hub_id", ["nobody/no-such-model", "Qwen/Qwen2.5-0.5B"])  # a dot is no file suffix
def test_a_hub_base_that_cannot_be_fetched_is_one_line(tiny_base, mc_file, hub_id, capsys, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("Got: ConnectError: [Errno -2] Name or service not known\nAn error happened "
                                      "while trying to locate the files on the Hub.")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    err = _eval_cli(tiny_base, mc_file, capsys, monkeypatch, base=hub_id)
    assert f"cannot get base model '{hub_id}' from the Hugging Face Hub" in err
    assert "free disk space" not in err and "local model dir" in err


@pytest.mark.parametrize("base", ["org/bad name", "models/llama.gguf", "a/b/c"])
def test_a_base_that_is_neither_a_dir_nor_a_hub_id_is_one_line(tiny_base, mc_file, base, capsys, monkeypatch):
    assert f"unknown base model '{base}'" in _eval_cli(tiny_base, mc_file, capsys, monkeypatch, base=base)


def test_weights_a_loader_would_start_at_random_or_cast_are_refused(tmp_path, tiny_base, tiny_loras, mc_file, capsys,
                                                                    monkeypatch):
    """A base with a tensor missing, and a LoRA with integer factors, loaded without registration: eval used to
    print numbers from a randomly initialised weight or a silent cast, with exit 0."""
    from safetensors.torch import load_file, save_file

    base = _copy(tiny_base, tmp_path / "missing")
    weights = next(base.glob("*.safetensors"))
    tensors = load_file(weights)
    del tensors["model.layers.0.mlp.down_proj.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    assert "1 weight(s) missing from the checkpoint (e.g. model.layers.0.mlp.down_proj.weight)" in _eval_cli(
        tiny_base, mc_file, capsys, monkeypatch, base=base)
    adapter = _copy(tiny_loras[0], tmp_path / "ints")
    tensors = load_file(adapter / ADAPTER_WEIGHTS)
    save_file({name: t.to(torch.int32) for name, t in tensors.items()}, adapter / ADAPTER_WEIGHTS)
    assert "is not floating point" in _eval_cli(tiny_base, mc_file, capsys, monkeypatch, "--adapter", adapter)


def test_a_base_without_tokenizer_files_is_one_line(tmp_path, tiny_base, mc_file, capsys, monkeypatch):
    base = _copy(tiny_base, tmp_path / "notok")
    for path in base.iterdir():
        if "token" in path.name:
            path.unlink()
    assert "cannot load the tokenizer" in _eval_cli(tiny_base, mc_file, capsys, monkeypatch, base=base)


def test_a_base_config_that_is_not_json_says_so(tmp_path, tiny_base, mc_file, capsys, monkeypatch):
    base = _copy(tiny_base, tmp_path / "badconfig")
    (base / "config.json").write_text("{oops")
    err = _eval_cli(tiny_base, mc_file, capsys, monkeypatch, base=base)
    assert "config.json is not valid JSON" in err and str(base / "config.json") in err


def _pickled_base(tiny_base, dst):
    base = _copy(tiny_base, dst)
    for path in base.glob("*.safetensors"):
        torch.save(load_file(path), base / "pytorch_model.bin")
        path.unlink()
    return base


def test_a_pickle_only_base_needs_allow_pickle_and_then_works(tmp_path, tiny_base, mc_file, capsys, monkeypatch):
    base = _pickled_base(tiny_base, tmp_path / "bin-base")
    assert "refusing to unpickle" in _eval_cli(tiny_base, mc_file, capsys, monkeypatch, base=base)
    allowed = evaluate_model(str(base), _data(mc_file), allow_pickle=True)
    assert allowed.loss == pytest.approx(evaluate_model(str(tiny_base), _data(mc_file)).loss)


def test_a_pickle_only_base_of_an_unknown_architecture_is_one_line(tmp_path, tiny_base, mc_file, capsys,
                                                                    monkeypatch):
    """Counted from its config (no safetensors headers to count): said as the load would say it."""
    base = _pickled_base(tiny_base, tmp_path / "bin-base")
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "model_type": "nonsense_arch"}))
    err = _eval_cli(tiny_base, mc_file, capsys, monkeypatch, "--allow-pickle", base=base)
    assert UNKNOWN_ARCHITECTURE in err and f"in {base / 'config.json'};" in err


# audit 5: a base config.json with a wrong-typed field, a pickle holding objects, a file given for a dir


def _with_config(tiny_base, dst, **change):
    base = _copy(tiny_base, dst)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, **change}))
    return base


def test_an_architecture_transformers_does_not_know_is_said_as_such(tmp_path, tiny_base, mc_file, capsys,
                                                                    monkeypatch):
    """Not "invalid model config ... fix that value": no value of config.json is wrong for a newer transformers."""
    import transformers

    base = _with_config(tiny_base, tmp_path / "unknown", model_type="nonsense_arch")
    err = _eval_cli(tiny_base, mc_file, capsys, monkeypatch, base=base)
    assert f"{UNKNOWN_ARCHITECTURE} {transformers.__version__} in {base / 'config.json'};" in err
    assert "upgrade transformers" in err and "invalid model config" not in err


@pytest.mark.parametrize(("change", "auto_map"), [
    ({"model_type": "x_arch", "auto_map": CUSTOM_CODE}, "AutoConfig, AutoModelForCausalLM"),  # no config class
    ({"model_type": "t5", "auto_map": {"AutoModelForCausalLM": "modeling_x.X"}}, "AutoModelForCausalLM"),  # no model
])
def test_a_config_that_needs_the_models_own_code_says_mashup_does_not_run_it(tmp_path, tiny_base, mc_file, capsys,
                                                                             monkeypatch, change, auto_map):
    base = _with_config(tiny_base, tmp_path / "custom", **change)
    err = _eval_cli(tiny_base, mc_file, capsys, monkeypatch, base=base)
    assert f"config.json needs the model's own code (auto_map: {auto_map}), and mashup does not run a model's own " \
           f"code (trust_remote_code) in {base / 'config.json'};" in err
    assert "invalid model config" not in err and "pass the argument" not in err


def test_an_auto_map_on_an_architecture_transformers_ships_is_no_fault_of_its_own(tmp_path, tiny_base, mc_file,
                                                                                 capsys, monkeypatch):
    """transformers uses its own class there: a wrong-typed field is still that field's fault."""
    base = _with_config(tiny_base, tmp_path / "typed", auto_map=CUSTOM_CODE, hidden_size="32")
    err = _eval_cli(tiny_base, mc_file, capsys, monkeypatch, base=base)
    assert "invalid model config" in err and "'hidden_size' expected int" in err and "own code" not in err
    assert load_model(_with_config(tiny_base, tmp_path / "fine", auto_map=CUSTOM_CODE)) is not None


def test_a_wrong_typed_base_config_field_is_one_line_naming_field_and_file(tmp_path, tiny_base, mc_file, capsys,
                                                                           monkeypatch):
    base = _with_config(tiny_base, tmp_path / "typed", hidden_size="32")
    err = _eval_cli(tiny_base, mc_file, capsys, monkeypatch, base=base)
    assert "invalid model config" in err and "'hidden_size' expected int" in err
    assert f"in {base / 'config.json'};" in err and "fix that value" in err


@pytest.mark.parametrize("change", [{"vocab_size": -1}, {"hidden_act": "nope"}, {"num_hidden_layers": 1.5}])
def test_a_config_no_model_can_be_built_from_is_named_by_load_model(tmp_path, tiny_base, change):
    base = _with_config(tiny_base, tmp_path / "unbuildable", **change)
    with pytest.raises(CheckpointError, match="invalid model config") as caught:
        load_model(base)
    assert caught.value.where == str(base / "config.json")


@pytest.mark.parametrize("pickled", [False, True])
def test_a_config_of_other_shapes_than_the_weights_is_one_line(tmp_path, tiny_base, mc_file, pickled, capsys,
                                                               monkeypatch):
    """A config that builds a model, but one the saved weights do not fit (transformers raised after a table); a
    pickle has no header to compare, so the load itself must say so."""
    saved = _pickled_base(tiny_base, tmp_path / "bin") if pickled else tiny_base
    base = _with_config(saved, tmp_path / "fewer_heads", num_key_value_heads=1)
    err = _eval_cli(tiny_base, mc_file, capsys, monkeypatch, *(["--allow-pickle"] if pickled else []), base=base)
    assert "weight model.layers.0.self_attn.k_proj.weight has shape [16, 32] but config.json makes it [8, 32]" in err
    assert f"in {base};" in err


def test_a_tied_head_of_another_vocab_size_is_one_line_too(tmp_path, tiny_base):
    """With tied embeddings transformers failed on meta tensors, before any size check of its own."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_base)
    config.tie_word_embeddings = True
    base = tmp_path / "tied"
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    _with_config(base, tmp_path / "tied_wider", vocab_size=config.vocab_size + 100)
    with pytest.raises(CheckpointError, match="weight model.embed_tokens.weight has shape") as caught:
        load_model(tmp_path / "tied_wider")
    assert caught.value.where == str(tmp_path / "tied_wider")


def test_a_config_with_fewer_layers_than_the_weights_is_refused(tmp_path, tiny_base):
    """transformers left the extra layers out with a note on stderr: a truncated model loaded."""
    base = _with_config(tiny_base, tmp_path / "one_layer", num_hidden_layers=1)
    with pytest.raises(CheckpointError, match=r"weight\(s\) in the checkpoint that config.json has no place for "
                                              r"\(e.g. model.layers.1."):
        load_model(base)


def test_a_model_type_that_is_no_causal_lm_is_said_as_such(tmp_path, tiny_base):
    """Not "fix that value": a T5 config is valid, just not a causal LM."""
    base = _with_config(tiny_base, tmp_path / "t5", model_type="t5", architectures=["T5ForConditionalGeneration"])
    with pytest.raises(CheckpointError, match="model_type 't5' is not a causal language model"):
        load_model(base)


def test_a_load_failure_the_config_does_not_explain_still_raises(tmp_path, tiny_base, monkeypatch):
    """Only the config's own failures become a CheckpointError: a bug in loading is not hidden behind one."""
    from transformers import AutoModelForCausalLM

    def bug(*args, **kwargs):
        raise TypeError("a bug in loading")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", bug)
    with pytest.raises(TypeError, match="a bug in loading"):
        load_model(tiny_base)


@pytest.mark.parametrize("extra", ["namespace", "nested"])
def test_a_pickle_holding_objects_is_one_line_without_torchs_advice(tmp_path, tiny_base, tiny_loras, mc_file, capsys,
                                                                    monkeypatch, extra):
    import argparse

    adapter = _copy(tiny_loras[0], tmp_path / "objects")
    tensors = load_file(adapter / ADAPTER_WEIGHTS)
    content = {**tensors, "args": argparse.Namespace(lr=1)} if extra == "namespace" else {"state_dict": tensors}
    torch.save(content, adapter / "adapter_model.bin")
    (adapter / ADAPTER_WEIGHTS).unlink()
    err = _eval_cli(tiny_base, mc_file, capsys, monkeypatch, "--adapter", adapter, "--allow-pickle")
    assert "holds objects beyond tensors" in err and "only tensor-only pickles" in err and "safetensors" in err
    assert "weights_only=False" not in err and str(adapter / "adapter_model.bin") in err
    assert ("argparse.Namespace" in err) == (extra == "namespace")


def test_a_file_given_for_an_adapter_or_model_dir_says_so(tmp_path, tiny_base, tiny_loras, tiny_fulls, mc_file,
                                                          capsys, monkeypatch):
    weights = tiny_loras[0] / ADAPTER_WEIGHTS
    err = _eval_cli(tiny_base, mc_file, capsys, monkeypatch, "--adapter", weights)
    assert "a file, not a LoRA adapter dir (a dir holding adapter_config.json)" in err
    assert f"pass the dir that holds it, {tiny_loras[0]}" in err and "not found" not in err
    err = _eval_cli(tiny_base, mc_file, capsys, monkeypatch, "--adapter", tiny_fulls[0])
    assert "no adapter_config.json: not a LoRA adapter dir (it holds a full model" in err
    err = _eval_cli(tiny_base, mc_file, capsys, monkeypatch, "--model", tiny_fulls[0] / "model.safetensors")
    assert "a file, not a checkpoint dir" in err and f"pass the dir that holds it, {tiny_fulls[0]}" in err


def test_loads_refuse_nan_weights_by_default(tmp_path, tiny_base, tiny_loras):
    """Every loader but the GGUF check (which compares logits) checks the values: that is the default now."""
    adapter = copy_with_nan(tiny_loras[0], tmp_path / "nan-adapter")
    with pytest.raises(CheckpointError, match="holds NaN or inf"):
        attach_adapter(load_model(tiny_base), adapter, trainable=False)
    base = copy_with_nan(tiny_base, tmp_path / "nan-base")
    with pytest.raises(CheckpointError, match="holds NaN or inf"):
        load_model(base)
    assert load_model(base, check_values=False) is not None  # asked for: unchecked
