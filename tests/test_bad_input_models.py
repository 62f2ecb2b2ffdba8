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

DATA = {"scoring": "letter", "max_length": 128}
ADAPTER_WEIGHTS = "adapter_model.safetensors"


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
        attach_adapter(load_model(tiny_base), adapter, trainable=False)
    with pytest.raises(CheckpointError, match="cannot load model"):
        load_model(full)


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
    base = _pickled_base(tiny_base, tmp_path / "bin-base")
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "model_type": "nonsense_arch"}))
    err = _eval_cli(tiny_base, mc_file, capsys, monkeypatch, "--allow-pickle", base=base)
    assert "cannot read the model config" in err and "bin-base" in err
