"""How a merge compares bases: the checkpoints' own base changed on disk is said as such (not as a wrong --base),
record-vs-record comparisons never go stale within a long process, the base dir is hashed once per merge, and
errors name both the CLI flag and the config key a value may come from."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mashup.config import MergeConfig
from mashup.errors import MergeError
from mashup.library import Library
from mashup.merging import merge_compatibility
from mashup.merging.plan import build_plan
from mashup.merging.tensors import require_finite_output
from mashup.verbs import merge
from tests.merging.helpers import records
from tests.tiny import save_tiny_base


def _rewrite_weights(model_dir: Path) -> None:
    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    save_file({name: t + 0.5 for name, t in tensors.items()}, path, metadata={"format": "pt"})


def test_the_checkpoints_own_base_changed_on_disk_says_so(tmp_path, tiny_base, tiny_fulls):
    base = Path(shutil.copytree(tiny_base, tmp_path / "base"))
    library = Library(tmp_path / "lib")
    ids = [r.id for r in library.add(tiny_fulls[:2], base=str(base))]
    _rewrite_weights(base)
    with pytest.raises(MergeError) as caught:
        merge(ids, MergeConfig(), tmp_path / "out", library.directory)
    line = caught.value.line()
    assert "holds other weights than when this checkpoint was registered" in line
    assert "restore the base dir's weights" in line and "--base" not in line
    assert f"only if {ids[0]}, {ids[1]} were fine-tuned from its new weights, register them again" in line
    assert not (tmp_path / "out").exists()


def test_a_given_base_of_other_content_says_to_leave_it_out(tmp_path, tiny_base, tiny_fulls):
    other = save_tiny_base(tmp_path / "other", seed=3)
    library = Library(tmp_path / "lib")
    ids = [r.id for r in library.add(tiny_fulls[:2], base=str(tiny_base))]
    with pytest.raises(MergeError, match="has other content than .*leave --base out to use theirs"):
        merge(ids, MergeConfig(), tmp_path / "out", library.directory, base=str(other))


def test_record_bases_are_compared_as_the_disk_is_now(tmp_path, tiny_base, tiny_loras):
    """A long process (an experiment) may compare the same two bases again after one changed."""
    second = save_tiny_base(tmp_path / "second", seed=4)
    pair = records(tiny_loras[:2])
    for record, base in zip(pair, (tiny_base, second)):
        record.base_model, record.base_identity = str(base), None
    assert "different base models" in (merge_compatibility(pair, MergeConfig()) or "")
    shutil.rmtree(second)
    shutil.copytree(tiny_base, second, copy_function=shutil.copy)  # now the same content
    assert merge_compatibility(pair, MergeConfig()) is None


def test_the_base_dir_is_hashed_once_per_merge(tmp_path, tiny_base, tiny_fulls, monkeypatch):
    import mashup.merging.api as api
    import mashup.verbs as verbs

    calls = []
    for module in (api, verbs):
        original = module.base_identity
        monkeypatch.setattr(module, "base_identity", lambda d, original=original: calls.append(d) or original(d))
    library = Library(tmp_path / "lib")
    ids = [r.id for r in library.add(tiny_fulls[:2], base=str(tiny_base))]
    report = merge(ids, MergeConfig(), tmp_path / "out", library.directory)
    assert len(calls) == 1 and report.base["identity"]


def test_errors_name_the_flag_and_the_config_key(tiny_loras):
    config = MergeConfig.model_validate({"method": "task_arithmetic", "lambda": 0})
    with pytest.raises(MergeError, match="--lambda / merge.lambda, or --lora-mode delta / merge.lora_mode"):
        build_plan(records(tiny_loras[:2]), config)
    with pytest.raises(MergeError, match=r"--weights / merge.weights, --lambda / merge.lambda"):
        require_finite_output(torch.tensor([float("inf")]), "layer.weight")
