"""``loaded_weight_files`` picks what transformers 5's ``from_pretrained`` loads from a model dir (a config's
``transformers_weights`` first, then model.safetensors, its index, and with pickles allowed pytorch_model.bin), and
refuses in one line a dir it would load nothing from: registration, a base's identity, the preflight and the load
agree on it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mashup.errors import CheckpointError
from mashup.io import load_weight_dir, loaded_weight_files
from mashup.library import Library
from mashup.models import check_base_available, load_model


def _copy(tiny_base: Path, to: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A copy of the tiny base without its model.safetensors, and that file's tensors."""
    shutil.copytree(tiny_base, to)
    state = load_file(str(to / "model.safetensors"))
    (to / "model.safetensors").unlink()
    return to, state


def _shards_without_index(model_dir: Path, state: dict[str, torch.Tensor]) -> None:
    names = sorted(state)
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:]), start=1):
        save_file({k: state[k] for k in part}, str(model_dir / f"model-0000{i}-of-00002.safetensors"))


def _variant(model_dir: Path, state: dict[str, torch.Tensor]) -> None:
    save_file(state, str(model_dir / "model.fp16.safetensors"))


@pytest.mark.parametrize("layout", [_shards_without_index, _variant])
def test_a_dir_transformers_loads_nothing_from_is_refused_alike_everywhere(tmp_path, tiny_base, monkeypatch, layout):
    """Before, the library registered (and hashed, and merged) every *.safetensors of it, which a load then
    refused: transformers reads no shards without their index, nor a variant mashup does not ask for."""
    from mashup.library.identity import base_identity

    monkeypatch.setenv("MASHUP_CACHE", str(tmp_path / "cache"))
    model_dir, state = _copy(tiny_base, tmp_path / "model")
    layout(model_dir, state)
    said = "transformers loads none of its weight files"
    with pytest.raises(CheckpointError, match=said) as caught:
        loaded_weight_files(model_dir)
    assert len(str(caught.value).splitlines()) == 1 and "re-save the model with save_pretrained" in caught.value.fix
    for reads in (load_model, base_identity, lambda d: check_base_available(str(d)),
                  lambda d: Library(tmp_path / "lib").add([d], base=str(tiny_base))):
        with pytest.raises(CheckpointError, match=said):
            reads(model_dir)


def test_a_configs_transformers_weights_is_the_file_loaded(tmp_path, tiny_base):
    """transformers loads the file it names, even beside a model.safetensors (here zeros), and so does mashup."""
    model_dir, state = _copy(tiny_base, tmp_path / "model")
    save_file(state, str(model_dir / "weights.safetensors"))
    save_file({k: torch.zeros_like(v) for k, v in state.items()}, str(model_dir / "model.safetensors"))
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "transformers_weights": "weights.safetensors"}))
    assert loaded_weight_files(model_dir) == [model_dir / "weights.safetensors"]
    loaded, read = load_model(model_dir).state_dict(), load_weight_dir(model_dir)
    assert all(torch.equal(loaded[name], tensor) for name, tensor in read.items())
    assert any(tensor.abs().sum() > 0 for tensor in read.values())


@pytest.mark.parametrize(("named", "said"), [("gone.safetensors", "names gone.safetensors, which is missing"),
                                             ("weights.pt", "'weights.pt' is not a safetensors file"),
                                             ("sub/w.safetensors", "not a file beside config.json")])
def test_a_transformers_weights_mashup_cannot_follow_is_one_line(tmp_path, tiny_base, named, said):
    model_dir = Path(shutil.copytree(tiny_base, tmp_path / "model"))
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "transformers_weights": named}))
    with pytest.raises(CheckpointError, match=said) as caught:
        loaded_weight_files(model_dir)
    assert caught.value.where == str(model_dir / "config.json") and len(str(caught.value).splitlines()) == 1


def test_pickles_loaded_are_pytorch_model_bin_only(tmp_path, tiny_base):
    """Trainer's training_args.bin (a pickle of objects) beside the weights is no weight file transformers loads."""
    model_dir, state = _copy(tiny_base, tmp_path / "model")
    torch.save(state, model_dir / "pytorch_model.bin")
    torch.save({"args": 1}, model_dir / "training_args.bin")
    assert loaded_weight_files(model_dir, allow_pickle=True) == [model_dir / "pytorch_model.bin"]
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        loaded_weight_files(model_dir)


def test_an_adapter_dir_gives_its_weight_files_as_before(tiny_loras):
    assert loaded_weight_files(tiny_loras[0]) == [tiny_loras[0] / "adapter_model.safetensors"]
    assert load_weight_dir(tiny_loras[0])


def test_an_adapter_dir_shipping_its_bases_config_is_an_adapter_dir(tmp_path, tiny_base, tiny_loras):
    """Many Hub adapters ship their base's config.json: registration takes them as adapters (adapter_config.json),
    and so must reading their weights, or a LoRA merge refuses them as models transformers loads nothing from."""
    from mashup.config import MergeConfig
    from mashup.merging import merge_checkpoints

    adapters = [Path(shutil.copytree(lora, tmp_path / f"lora{i}")) for i, lora in enumerate(tiny_loras[:2])]
    for adapter in adapters:
        shutil.copy2(tiny_base / "config.json", adapter / "config.json")
    assert loaded_weight_files(adapters[0]) == [adapters[0] / "adapter_model.safetensors"]
    records = Library(tmp_path / "lib").add(adapters)
    merge_checkpoints(records, MergeConfig(method="average"), tmp_path / "merged")
    assert (tmp_path / "merged" / "adapter_model.safetensors").is_file()


def test_an_adapter_dir_with_a_model_index_and_no_weights_names_the_missing_shard(tmp_path, tiny_loras):
    """weight_files and loaded_weight_files called each other here, without end (RecursionError)."""
    from mashup.io import weight_files

    adapter = Path(shutil.copytree(tiny_loras[0], tmp_path / "lora"))
    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "s1.safetensors"}}))
    with pytest.raises(CheckpointError, match="shard s1.safetensors named by model.safetensors.index.json"):
        weight_files(adapter)
    with pytest.raises(CheckpointError, match=r"holds a model's weights \(model.safetensors.index.json\) beside an"):
        loaded_weight_files(adapter)


def test_pickle_shards_an_index_names_register_whatever_their_names(tmp_path, tiny_base):
    """transformers loads the shards pytorch_model.bin.index.json names, under any file name."""
    model_dir, state = _copy(tiny_base, tmp_path / "model")
    names = sorted(state)
    halves = {f"model-0000{i}-of-00002.bin": names[i - 1::2] for i in (1, 2)}
    for shard, keys in halves.items():
        torch.save({k: state[k] for k in keys}, model_dir / shard)
    index = {"weight_map": {k: shard for shard, keys in halves.items() for k in keys}}
    (model_dir / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (record,) = Library(tmp_path / "lib").add([model_dir], base=str(tiny_base), allow_pickle=True)
    assert [s["name"] for s in record.file_stats] == sorted(halves)


def test_a_legacy_record_of_a_pickled_base_beside_training_args_matches_it(tmp_path, tiny_base, tiny_fulls,
                                                                            monkeypatch):
    """Records made when the base's digest hashed every .bin (training_args.bin too) still match it."""
    import dataclasses

    from mashup.library import BaseMatcher
    from mashup.library.identity import base_identity, legacy_base_identity

    monkeypatch.setenv("MASHUP_CACHE", str(tmp_path / "cache"))
    base, state = _copy(tiny_base, tmp_path / "base")
    torch.save(state, base / "pytorch_model.bin")
    torch.save({"lr": torch.tensor(1.0)}, base / "training_args.bin")
    legacy = legacy_base_identity(base)
    assert legacy not in (None, base_identity(base))
    (record,) = Library(tmp_path / "lib").add([tiny_fulls[0]], base=str(base), allow_pickle=True)
    assert BaseMatcher(str(base)).mismatch(dataclasses.replace(record, base_identity=legacy)) is None


def test_a_model_dir_holding_an_adapter_config_is_refused_everywhere(tmp_path, tiny_base, tiny_loras, tiny_fulls):
    """transformers 5 loads it as the model with the adapter applied again on top (a merge_and_unload output saved
    into its adapter's dir): the logits differ from the model's own; mashup read one or the other."""
    both = Path(shutil.copytree(tiny_base, tmp_path / "both"))
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(tiny_loras[0] / name, both / name)
    said = r"holds a model's weights \(model.safetensors\) beside an adapter \(adapter_config.json\)"
    for reads in (load_model, lambda d: check_base_available(str(d)), lambda d: Library(tmp_path / "l1").add([d]),
                  lambda d: Library(tmp_path / "l2").add([tiny_fulls[0]], base=str(d))):
        with pytest.raises(CheckpointError, match=said):
            reads(both)
    (both / "model.safetensors").rename(both / "weights.safetensors")  # named by the config: loaded all the same
    config = json.loads((both / "config.json").read_text())
    (both / "config.json").write_text(json.dumps({**config, "transformers_weights": "weights.safetensors"}))
    with pytest.raises(CheckpointError, match=r"holds a model's weights \(weights.safetensors\) beside an adapter"):
        load_model(both)


def test_a_trainers_optimizer_state_beside_a_pickled_adapter_is_no_weight_file(tmp_path, tiny_loras):
    from safetensors.torch import load_file as read

    adapter = Path(shutil.copytree(tiny_loras[0], tmp_path / "checkpoint-500"))
    torch.save(read(str(adapter / "adapter_model.safetensors")), adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    torch.save({"state": {}, "param_groups": [{"lr": 1.0}]}, adapter / "optimizer.bin")
    (record,) = Library(tmp_path / "lib").add([adapter], allow_pickle=True)
    assert [s["name"] for s in record.file_stats] == ["adapter_model.bin"]


def test_a_pickled_trainer_dir_registers_with_pickles_allowed(tmp_path, tiny_base):
    """Its training_args.bin (a pickle of objects) was hashed and value-checked as a weight file, and refused."""
    import argparse

    model_dir, state = _copy(tiny_base, tmp_path / "model")
    torch.save(state, model_dir / "pytorch_model.bin")
    torch.save(argparse.Namespace(lr=1.0), model_dir / "training_args.bin")
    (record,) = Library(tmp_path / "lib").add([model_dir], base=str(tiny_base), allow_pickle=True)
    assert [s["name"] for s in record.file_stats] == ["pytorch_model.bin"]


def test_a_transformers_weights_spelled_from_the_dir_is_the_file_beside_config(tmp_path, tiny_base):
    model_dir, state = _copy(tiny_base, tmp_path / "model")
    save_file(state, str(model_dir / "weights.safetensors"))
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "transformers_weights": "./weights.safetensors"}))
    assert loaded_weight_files(model_dir) == [model_dir / "weights.safetensors"]


def test_a_base_transformers_loads_nothing_from_is_no_base_to_register_against(tmp_path, tiny_base, tiny_fulls):
    """--base was checked with every *.safetensors: a fine-tune registered against shards without an index, with
    no identity, which every load then refused."""
    model_dir, state = _copy(tiny_base, tmp_path / "base")
    _shards_without_index(model_dir, state)
    with pytest.raises(CheckpointError, match="not a base model dir: transformers loads none of its weight files"):
        Library(tmp_path / "lib").add([tiny_fulls[0]], base=str(model_dir))


def test_a_full_merge_of_a_base_naming_its_weights_file_writes_a_model_that_loads(tmp_path, tiny_base, tiny_fulls):
    """The output is model.safetensors: the config copied from the base may not name the base's own file (as
    transformers' save_pretrained drops transformers_weights)."""
    from mashup.config import MergeConfig
    from mashup.merging import merge_checkpoints

    base, state = _copy(tiny_base, tmp_path / "base")
    save_file(state, str(base / "weights.safetensors"))
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "transformers_weights": "weights.safetensors"}))
    records = Library(tmp_path / "lib").add(tiny_fulls[:2], base=str(base))
    merge_checkpoints(records, MergeConfig(method="task_arithmetic"), tmp_path / "merged", base_model_dir=base)
    assert "transformers_weights" not in json.loads((tmp_path / "merged" / "config.json").read_text())
    load_model(tmp_path / "merged")


def test_a_rescan_takes_no_dir_holding_only_a_trainers_arguments_for_a_model(tmp_path, tiny_base, tiny_loras):
    """config.json beside training_args.bin alone (a run's output dir before its weights are saved) is no
    checkpoint: a re-scan registering it would stop at it, all or none."""
    from mashup.library.records import discover_checkpoints

    run = tmp_path / "runs" / "run"
    run.mkdir(parents=True)
    shutil.copy2(tiny_base / "config.json", run / "config.json")
    torch.save({"lr": torch.tensor(1.0)}, run / "training_args.bin")
    adapter = Path(shutil.copytree(tiny_loras[0], tmp_path / "runs" / "lora"))
    assert discover_checkpoints([tmp_path / "runs"]) == [adapter.resolve()]
