import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from mashup.errors import CheckpointError, LibraryError
from mashup.library import Library, partition_compatible
from tests.tiny import save_tiny_lora


def test_add_list_show_remove_round_trip(tmp_path, tiny_base, tiny_loras):
    library = Library(tmp_path / "lib")
    added = library.add(tiny_loras[:2], task="sciq")
    assert [r.id for r in library.list()] == [r.id for r in added]
    record = library.get(added[0].id[:6])
    assert record.kind == "lora" and record.lora_r == 4 and record.lora_alpha == 8
    assert record.target_modules == ["q_proj", "up_proj", "v_proj"]
    assert record.base_model == str(tiny_base)
    assert record.shapes["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] == [4, 32]
    library.remove(record.id)
    assert [r.id for r in library.list()] == [added[1].id]
    assert tiny_loras[0].exists(), "remove must never delete user files"


def test_full_checkpoint_needs_base(tmp_path, tiny_base, tiny_fulls):
    library = Library(tmp_path / "lib")
    with pytest.raises(CheckpointError, match="--base"):
        library.add([tiny_fulls[0]])
    record = library.add([tiny_fulls[0]], base=str(tiny_base))[0]
    assert record.kind == "full" and record.architecture == "LlamaForCausalLM"


def test_failed_add_changes_nothing(tmp_path, tiny_loras):
    library = Library(tmp_path / "lib")
    library.add([tiny_loras[0]])
    before = [r.to_dict() for r in library.list()]
    broken = tmp_path / "broken"
    shutil.copytree(tiny_loras[1], broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        library.add([tiny_loras[2], broken])
    with pytest.raises(LibraryError, match="already registered"):
        library.add([tiny_loras[0]])
    assert [r.to_dict() for r in library.list()] == before


def test_nan_weights_and_rank_mismatch_are_refused(tmp_path, tiny_loras):
    nan_dir = tmp_path / "nan"
    shutil.copytree(tiny_loras[0], nan_dir)
    tensors = load_file(nan_dir / "adapter_model.safetensors")
    name = next(iter(tensors))
    tensors[name][0, 0] = float("nan")
    save_file(tensors, nan_dir / "adapter_model.safetensors")
    with pytest.raises(CheckpointError, match="NaN"):
        Library(tmp_path / "lib").add([nan_dir])
    bad_rank = tmp_path / "rank"
    shutil.copytree(tiny_loras[0], bad_rank)
    config = json.loads((bad_rank / "adapter_config.json").read_text())
    (bad_rank / "adapter_config.json").write_text(json.dumps({**config, "r": 16}))
    with pytest.raises(CheckpointError, match="rank 4"):
        Library(tmp_path / "lib").add([bad_rank])


@pytest.mark.parametrize("layout", ["one block", "two dtypes"])
def test_every_non_finite_value_is_found_and_its_tensor_named(tmp_path, layout):
    """Finite one-dtype files are checked as one mapped block; a NaN or inf there, or a file in several
    dtypes, is checked tensor by tensor, so the error names the tensor."""
    import torch

    from mashup.io import check_finite, read_tensor_block

    tensors = {f"t{i}": torch.randn(3, 5) for i in range(4)}
    if layout == "two dtypes":
        tensors["t0"] = tensors["t0"].half()
    path = tmp_path / "w.safetensors"
    save_file(tensors, path)
    assert (read_tensor_block(path) is not None) == (layout == "one block")
    check_finite([path])
    for bad, value in [("t3", float("inf")), ("t0", float("nan"))]:
        broken = {**tensors, bad: tensors[bad].clone()}
        broken[bad][2, 4] = value
        save_file(broken, path)
        with pytest.raises(CheckpointError, match=f"tensor {bad} holds NaN or inf"):
            check_finite([path])


@pytest.mark.parametrize("layout", ["one block", "one block, bf16", "two dtypes"])
def test_hashing_checks_values_from_the_same_reads(tmp_path, monkeypatch, layout):
    """``sha256_files(check_values=True)``: the plain digest, and ``check_finite``'s error for a NaN or inf in
    any chunk of the data (chunks of 16 bytes here), naming the tensor."""
    import torch

    from mashup import io
    from mashup.io import hashing

    monkeypatch.setattr(hashing, "_CHECK_CHUNK", 16)
    tensors = {f"t{i}": torch.randn(3, 5) for i in range(4)}
    if layout == "one block, bf16":
        tensors = {name: t.bfloat16() for name, t in tensors.items()}
    if layout == "two dtypes":
        tensors["t0"] = tensors["t0"].half()
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for path in paths:
        save_file(tensors, path)
    assert io.sha256_files(paths, check_values=True) == io.sha256_files(paths)
    for bad, value in [("t3", float("inf")), ("t0", float("nan"))]:
        broken = {**tensors, bad: tensors[bad].clone()}
        broken[bad][2, 4] = value
        save_file(broken, paths[1])
        with pytest.raises(CheckpointError, match=f"tensor {bad} holds NaN or inf"):
            io.sha256_files(paths, check_values=True)


def test_pickle_weights_are_refused_without_opt_in(tmp_path, tiny_loras):
    import torch

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_loras[0], pickled)
    tensors = load_file(pickled / "adapter_model.safetensors")
    (pickled / "adapter_model.safetensors").unlink()
    torch.save(tensors, pickled / "adapter_model.bin")
    with pytest.raises(CheckpointError, match="--allow-pickle"):
        Library(tmp_path / "lib").add([pickled])
    assert Library(tmp_path / "lib2").add([pickled], allow_pickle=True)[0].kind == "lora"


def test_incompatible_checkpoints_are_listed_with_reason(tmp_path, tiny_base, tiny_loras):
    other_rank = save_tiny_lora(tiny_base, tmp_path / "r8", seed=5, r=8)
    library = Library(tmp_path / "lib")
    library.add([tiny_loras[0], other_rank])
    compatible, rejected = partition_compatible(library.list(), str(tiny_base), "lora")
    assert len(compatible) == 1 and len(rejected) == 1
    assert "rank" in rejected[0][1]
    _, wrong_base = partition_compatible(library.list(), "some/other-base", "lora")
    assert all("base model" in reason for _, reason in wrong_base)
