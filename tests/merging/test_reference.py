"""LoRA init references are compared by content: adapters trained from one seed share an init."""

import shutil

import pytest
from safetensors.torch import load_file, save_file

from mashup.config import MergeConfig
from mashup.errors import MergeError
from mashup.merging import merge_checkpoints
from tests.merging.helpers import records


def _reference_copies(tmp_path, adapter, n):
    paths = []
    for i in range(n):
        path = tmp_path / f"init{i}.safetensors"
        shutil.copy(adapter / "adapter_model.safetensors", path)
        paths.append(path)
    return paths


def test_identical_init_files_at_different_paths_are_one_reference(tmp_path, tiny_loras):
    recs = records(tiny_loras[:2])
    for record, path in zip(recs, _reference_copies(tmp_path, tiny_loras[2], 2)):
        record.init_reference = str(path)
    report = merge_checkpoints(recs, MergeConfig(method="ties", density=0.5), tmp_path / "out")
    assert not any("zero adapter" in w for w in report.warnings)


def test_different_init_weights_are_refused_only_by_methods_that_use_them(tmp_path, tiny_loras):
    recs = records(tiny_loras[:2])
    paths = _reference_copies(tmp_path, tiny_loras[2], 2)
    tensors = load_file(paths[1])
    save_file({name: t * 2 for name, t in tensors.items()}, paths[1])
    for record, path in zip(recs, paths):
        record.init_reference = str(path)
    with pytest.raises(MergeError, match="different init references"):
        merge_checkpoints(recs, MergeConfig(method="ties", density=0.5), tmp_path / "ties")
    assert not (tmp_path / "ties").exists()
    merge_checkpoints(recs, MergeConfig(method="average"), tmp_path / "average")
    assert (tmp_path / "average" / "adapter_model.safetensors").exists()
