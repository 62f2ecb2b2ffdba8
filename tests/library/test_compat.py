"""Compatibility: bases by content, the most common LoRA signature as template, every exclusion with its reason."""

import json
import shutil
import socket

import pytest

import mashup.library.identity as identity
from mashup.errors import CheckpointError
from mashup.library import Library, base_identity, partition_compatible, resolve_identity
from mashup.named_models import MARKER
from tests.library.helpers import noisy_copy
from tests.tiny import save_tiny_lora


@pytest.fixture()
def isolated_cache(tmp_path, monkeypatch):
    """A private MASHUP_CACHE (identity cache and named-model dir)."""
    monkeypatch.setenv("MASHUP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_identity_is_content_not_spelling(tmp_path, tiny_base, isolated_cache, monkeypatch):
    copy = shutil.copytree(tiny_base, tmp_path / "copy")
    link = tmp_path / "link"
    link.symlink_to(tiny_base)
    ids = {base_identity(p) for p in (tiny_base, f"{tiny_base}/", copy, link, f"{tmp_path}/./copy")}
    assert len(ids) == 1
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "_name_or_path": "elsewhere",
                                                  "transformers_version": "0.0"}))
    assert base_identity(copy) in ids, "name and version fields do not define a model"
    (copy / "config.json").write_text(json.dumps({**config, "rope_theta": 1.0}))
    assert base_identity(copy) not in ids


def test_identity_is_hashed_once_then_cached(tmp_path, tiny_base, isolated_cache, monkeypatch):
    calls = []
    real = identity.sha256_files
    monkeypatch.setattr(identity, "sha256_files", lambda files: calls.append(1) or real(files))
    first = base_identity(tiny_base)
    assert base_identity(tiny_base) == first and len(calls) == 1
    copy = shutil.copytree(tiny_base, tmp_path / "copy")
    assert base_identity(copy) == first and len(calls) == 2, "another path is hashed once too"


def test_alias_resolved_dir_and_spellings_are_one_base(tmp_path, tiny_base, tiny_loras, isolated_cache):
    converted = shutil.copytree(tiny_base, isolated_cache / "models" / "smollm2-135m")
    (converted / MARKER).write_text("{}")
    by_alias = noisy_copy(tiny_loras[0], tmp_path / "alias", seed=1, base_model_name_or_path="smollm2-135m")
    by_path = noisy_copy(tiny_loras[0], tmp_path / "path", seed=2, base_model_name_or_path=f"{converted}/")
    by_original = noisy_copy(tiny_loras[0], tmp_path / "orig", seed=3)
    library = Library(tmp_path / "lib")
    records = library.add([by_alias, by_path, by_original])
    assert len({r.base_identity for r in records}) == 1 and records[0].base_identity
    for base in ("smollm2-135m", str(converted), str(tiny_base)):
        compatible, rejected = partition_compatible(library.list(), base, "lora")
        assert len(compatible) == 3 and rejected == [], base
        assert len(library.list(base=base)) == 3
    again = Library(tmp_path / "lib2").add([by_alias], base=str(converted))[0]  # --base spelled otherwise: fine
    assert again.base_model == str(converted) and again.base_identity == records[0].base_identity
    other = shutil.copytree(tiny_base, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-3}))
    compatible, rejected = partition_compatible(library.list(), str(other), "lora")
    assert compatible == [] and all("other content" in reason for _, reason in rejected)
    with pytest.raises(CheckpointError, match="adapter names base 'smollm2-135m' but --base is"):
        Library(tmp_path / "lib3").add([by_alias], base=str(other))


def test_unresolvable_bases_fall_back_to_names_without_any_network(tmp_path, tiny_loras, isolated_cache,
                                                                    monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert resolve_identity("some-org/not-in-the-local-cache") is None
    assert resolve_identity("smollm2-135m") is None, "a named model counts only once converted"
    adapter = noisy_copy(tiny_loras[0], tmp_path / "hub", seed=1, base_model_name_or_path="some-org/model")
    record = Library(tmp_path / "lib").add([adapter])[0]
    assert record.base_identity is None
    assert partition_compatible([record], "some-org/model", "lora")[0] == [record]
    assert "not 'some-org/other'" in partition_compatible([record], "some-org/other", "lora")[1][0][1]


def _library_with_signatures(tmp_path, tiny_base, specs):
    library = Library(tmp_path / "lib")
    paths = []
    for i, (r, alpha, rslora, targets) in enumerate(specs):
        path = save_tiny_lora(tiny_base, tmp_path / f"l{i}", seed=i, r=r, targets=targets)
        config = json.loads((path / "adapter_config.json").read_text())
        (path / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": alpha, "use_rslora": rslora}))
        paths.append(path)
    return library, library.add(paths)


QV = ("q_proj", "v_proj")


def test_most_common_signature_is_the_template_and_ab_excludes_the_rest_with_reasons(tmp_path, tiny_base):
    library, records = _library_with_signatures(tmp_path, tiny_base, [
        (4, 8, False, QV),  # the odd one out comes first: it must not fix the template
        (8, 16, False, QV), (8, 16, False, QV), (8, 16, False, QV),
        (8, 32, False, QV), (8, 16, True, QV), (8, 16, False, ("q_proj", "k_proj", "v_proj")),
    ])
    compatible, rejected = partition_compatible(library.list(), str(tiny_base), "lora", lora_mode="ab")
    assert [r.id for r in compatible] == [r.id for r in records[1:4]]
    reasons = {r.id: reason for r, reason in rejected}
    assert "LoRA rank 4 differs from 8" in reasons[records[0].id]
    assert "lora_alpha 32 differs from 16" in reasons[records[4].id]
    assert "use_rslora True differs from False" in reasons[records[5].id]
    assert "target modules" in reasons[records[6].id]
    assert all("--lora-mode delta" in reason for reason in reasons.values())
    for mode in ("delta", "concat"):
        compatible, rejected = partition_compatible(library.list(), str(tiny_base), "lora", lora_mode=mode)
        assert len(compatible) == 7 and rejected == [], mode
    compatible, _ = partition_compatible(library.list(), str(tiny_base), "lora", records[0], lora_mode="ab")
    assert [r.id for r in compatible] == [records[0].id], "an explicit template wins"


def test_full_checkpoints_need_equal_shapes(tmp_path, tiny_base, tiny_fulls, tiny_loras):
    library = Library(tmp_path / "lib")
    library.add(tiny_fulls, base=str(tiny_base))
    library.add(tiny_loras[:1])
    compatible, rejected = partition_compatible(library.list(), str(tiny_base), "full", lora_mode="delta")
    assert len(compatible) == 3 and [reason for _, reason in rejected] == ["kind is lora, not full"]
