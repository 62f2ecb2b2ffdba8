"""Bad checkpoints met where eval and train load them: one CheckpointError line, nothing written.

Bad base models and config.json files: tests/test_bad_input_bases.py."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mashup.config import EvalConfig, TrainConfig
from mashup.errors import CheckpointError, MashupError
from mashup.models import attach_adapter, load_model
from mashup.verbs import evaluate_model, train_model
from tests.bad_models import ADAPTER_WEIGHTS, copy_dir, data_config, eval_error
from tests.tiny import copy_with_nan


def _train(tmp_path, tiny_base, mc_file, init, **kwargs):
    config = TrainConfig(**{"batch_size": 8, "max_steps": 1, "lr": 5e-3, **kwargs})
    return train_model(str(tiny_base), data_config(mc_file), config, tmp_path / "out", init=init,
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
    adapter = copy_dir(src, dst)
    torch.save(load_file(adapter / ADAPTER_WEIGHTS), adapter / "adapter_model.bin")
    (adapter / ADAPTER_WEIGHTS).unlink()
    return adapter


def test_a_pickled_adapter_is_not_unpickled_unless_allowed(tmp_path, tiny_base, tiny_loras, mc_file, capsys,
                                                           monkeypatch):
    adapter = _pickled(tiny_loras[0], tmp_path / "bin")
    assert "refusing to unpickle" in eval_error(tiny_base, mc_file, capsys, monkeypatch, "--adapter", adapter)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        _train(tmp_path, tiny_base, mc_file, adapter)
    assert not (tmp_path / "out").exists()
    data = data_config(mc_file)
    allowed = evaluate_model(str(tiny_base), data, adapter=adapter, allow_pickle=True)
    assert allowed.loss == pytest.approx(evaluate_model(str(tiny_base), data, adapter=tiny_loras[0]).loss)


def test_allow_pickle_still_loads_a_safetensors_model(tiny_base):
    assert load_model(tiny_base, allow_pickle=True) is not None


@pytest.mark.parametrize("where", ["adapter", "model", "base"])
def test_nan_weights_are_refused_by_eval(tmp_path, tiny_base, tiny_loras, tiny_fulls, mc_file, capsys, monkeypatch,
                                         where):
    if where == "adapter":
        broken = copy_dir(tiny_loras[0], tmp_path / "nan")
        name = _with_nan(broken / ADAPTER_WEIGHTS)
        err = eval_error(tiny_base, mc_file, capsys, monkeypatch, "--adapter", broken)
    else:
        broken = copy_dir(tiny_fulls[0] if where == "model" else tiny_base, tmp_path / "nan")
        name = _with_nan(broken / "model.safetensors")
        args = ["--model", broken] if where == "model" else []
        err = eval_error(tiny_base, mc_file, capsys, monkeypatch, *args, base=broken if where == "base" else None)
    assert f"tensor {name} holds NaN or inf" in err and str(broken) in err


def test_nan_init_is_refused_before_training(tmp_path, tiny_base, tiny_loras, mc_file):
    broken = copy_dir(tiny_loras[0], tmp_path / "nan")
    _with_nan(broken / ADAPTER_WEIGHTS)
    with pytest.raises(CheckpointError, match="holds NaN or inf"):  # not "training diverged"
        _train(tmp_path, tiny_base, mc_file, broken)
    assert not (tmp_path / "out").exists()


def test_truncated_weights_are_one_line(tmp_path, tiny_base, tiny_loras, tiny_fulls, mc_file, capsys, monkeypatch):
    adapter = copy_dir(tiny_loras[0], tmp_path / "trunc")
    _truncate(adapter / ADAPTER_WEIGHTS)
    assert "corrupt or truncated" in eval_error(tiny_base, mc_file, capsys, monkeypatch, "--adapter", adapter)
    full = copy_dir(tiny_fulls[0], tmp_path / "fulltrunc")
    _truncate(full / "model.safetensors")
    assert "corrupt or truncated" in eval_error(tiny_base, mc_file, capsys, monkeypatch, "--model", full)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        _train(tmp_path, tiny_base, mc_file, adapter)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):  # unchecked loads name the file as well
        attach_adapter(load_model(tiny_base), adapter, trainable=False, check_values=False)
    with pytest.raises(CheckpointError, match="model.safetensors; the file is corrupt or truncated"):
        load_model(full, check_values=False)


@pytest.mark.parametrize("targets", [["k_proj"], ["q_proj"], ["q_proj", "k_proj", "v_proj", "up_proj"]])
def test_adapter_config_that_disagrees_with_the_weights_is_refused(tmp_path, tiny_base, tiny_loras, targets):
    adapter = copy_dir(tiny_loras[0], tmp_path / "cfg")  # its weights: q_proj, v_proj, up_proj
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
    adapter = copy_dir(tiny_loras[0], tmp_path / "cfg")
    (adapter / "adapter_config.json").write_text(config)
    with pytest.raises(CheckpointError, match="adapter_config.json"):
        _train(tmp_path, tiny_base, mc_file, adapter)


@pytest.mark.parametrize(("change", "problem"), [
    ({"lora_alpha": 0}, "field 'lora_alpha' is 0, expected a non-zero number"),  # as registration refuses it
    ({"lora_dropout": 1.5}, "invalid config field 'lora_dropout'"),
])
def test_an_init_adapter_config_outside_the_train_config_ranges_is_one_error(tmp_path, tiny_base, tiny_loras,
                                                                             mc_file, change, problem):
    adapter = copy_dir(tiny_loras[0], tmp_path / "cfg")
    config_path = adapter / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **change}))
    with pytest.raises(MashupError, match=f"{problem}.*adapter_config.json"):
        _train(tmp_path, tiny_base, mc_file, adapter)
    assert not (tmp_path / "out").exists()


def test_an_init_negated_through_its_alpha_trains_from_the_same_delta_w(tmp_path, tiny_base, tiny_loras, mc_file):
    """A negative lora_alpha is a legitimate task vector (the library registers it): with B negated too it is the
    same ΔW, so training starts from the same loss as from the original."""
    adapter = copy_dir(tiny_loras[0], tmp_path / "negated")
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "lora_alpha": -config["lora_alpha"]}))
    tensors = load_file(adapter / ADAPTER_WEIGHTS)
    save_file({k: -v if "lora_B" in k else v for k, v in tensors.items()}, adapter / ADAPTER_WEIGHTS)
    original = evaluate_model(str(tiny_base), data_config(mc_file), adapter=tiny_loras[0],
                              config=EvalConfig(batch_size=4))
    summary = _train(tmp_path, tiny_base, mc_file, adapter, eval_every=1)
    assert summary.result.curve[0].step == 0
    assert summary.result.curve[0].loss == pytest.approx(original.loss, abs=1e-5)
    assert json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())["lora_alpha"] < 0

def test_weights_a_loader_would_start_at_random_or_cast_are_refused(tmp_path, tiny_base, tiny_loras, mc_file, capsys,
                                                                    monkeypatch):
    """A base with a tensor missing, and a LoRA with integer factors, loaded without registration: eval used to
    print numbers from a randomly initialised weight or a silent cast, with exit 0."""
    from safetensors.torch import load_file, save_file

    base = copy_dir(tiny_base, tmp_path / "missing")
    weights = next(base.glob("*.safetensors"))
    tensors = load_file(weights)
    del tensors["model.layers.0.mlp.down_proj.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    assert "1 weight(s) missing from the checkpoint (e.g. model.layers.0.mlp.down_proj.weight)" in eval_error(
        tiny_base, mc_file, capsys, monkeypatch, base=base)
    adapter = copy_dir(tiny_loras[0], tmp_path / "ints")
    tensors = load_file(adapter / ADAPTER_WEIGHTS)
    save_file({name: t.to(torch.int32) for name, t in tensors.items()}, adapter / ADAPTER_WEIGHTS)
    assert "is not floating point" in eval_error(tiny_base, mc_file, capsys, monkeypatch, "--adapter", adapter)

@pytest.mark.parametrize("extra", ["namespace", "nested"])
def test_a_pickle_holding_objects_is_one_line_without_torchs_advice(tmp_path, tiny_base, tiny_loras, mc_file, capsys,
                                                                    monkeypatch, extra):
    import argparse

    adapter = copy_dir(tiny_loras[0], tmp_path / "objects")
    tensors = load_file(adapter / ADAPTER_WEIGHTS)
    content = {**tensors, "args": argparse.Namespace(lr=1)} if extra == "namespace" else {"state_dict": tensors}
    torch.save(content, adapter / "adapter_model.bin")
    (adapter / ADAPTER_WEIGHTS).unlink()
    err = eval_error(tiny_base, mc_file, capsys, monkeypatch, "--adapter", adapter, "--allow-pickle")
    assert "holds objects beyond tensors" in err and "only tensor-only pickles" in err and "safetensors" in err
    assert "weights_only=False" not in err and str(adapter / "adapter_model.bin") in err
    assert ("argparse.Namespace" in err) == (extra == "namespace")


def test_a_file_given_for_an_adapter_or_model_dir_says_so(tmp_path, tiny_base, tiny_loras, tiny_fulls, mc_file,
                                                          capsys, monkeypatch):
    weights = tiny_loras[0] / ADAPTER_WEIGHTS
    err = eval_error(tiny_base, mc_file, capsys, monkeypatch, "--adapter", weights)
    assert "a file, not a LoRA adapter dir (a dir holding adapter_config.json)" in err
    assert f"pass the dir that holds it, {tiny_loras[0]}" in err and "not found" not in err
    err = eval_error(tiny_base, mc_file, capsys, monkeypatch, "--adapter", tiny_fulls[0])
    assert "no adapter_config.json: not a LoRA adapter dir (it holds a full model" in err
    err = eval_error(tiny_base, mc_file, capsys, monkeypatch, "--model", tiny_fulls[0] / "model.safetensors")
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
