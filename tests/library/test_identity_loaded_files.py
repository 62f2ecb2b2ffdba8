"""A base's identity hashes its config and the weight files transformers loads, not another copy of the weights
beside them (Mistral's consolidated.safetensors); records made when every weight file was hashed still match."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import mashup.library.identity as identity
from mashup.library import BaseMatcher, Library, base_identity, partition_compatible
from mashup.library.identity import same_base
from tests.library.helpers import noisy_copy

OTHER_COPY = "consolidated.safetensors"
# base_identity of the dirs ``_fixed_dirs`` writes, as mashup computed it before it left other copies out
GOLDEN = {"single": "ba7b63ee277b1bb67efc74a17753b868df698b41a26c19a36affb752fd86a42a",
          "sharded": "538397745473a3808c6a54101691530815e082757c7d05340db43b74d98b2933",
          "sharded+consolidated": "67b7977be738758207cd9bbb769e8f8355ef68fd63e1f51755a8b24d35e860a9"}


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private MASHUP_CACHE (the identity cache)."""
    monkeypatch.setenv("MASHUP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The file names of each identity hashed (not read from the cache)."""
    calls: list[list[str]] = []
    real = identity.sha256_files
    monkeypatch.setattr(identity, "sha256_files", lambda files: calls.append([f.name for f in files]) or real(files))
    return calls


def _fixed_dirs(root: Path) -> tuple[Path, Path]:
    """A single-file and a sharded model dir of fixed bytes (identity reads files, not tensors)."""
    single, sharded = root / "single", root / "sharded"
    single.mkdir()
    (single / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8, "_name_or_path": "x"}))
    (single / "model.safetensors").write_bytes(b"the weights")
    sharded.mkdir()
    (sharded / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict(zip("ab", shards))}))
    (sharded / shards[0]).write_bytes(b"first half")
    (sharded / shards[1]).write_bytes(b"second half")
    return single, sharded


def _with_other_copy(model_dir: Path) -> Path:
    save_file({"layers.0.attention.wq.weight": torch.zeros(2, 2)}, str(model_dir / OTHER_COPY))
    return model_dir


def test_the_identity_of_a_dir_holding_only_the_loaded_files_is_unchanged(tmp_path, hashes):
    """Libraries, score caches and adapters hold identities computed before: for nearly every model the same."""
    single, sharded = _fixed_dirs(tmp_path)
    assert (base_identity(single), base_identity(sharded)) == (GOLDEN["single"], GOLDEN["sharded"])


def test_a_dir_holding_only_the_loaded_files_has_no_legacy_identity(tmp_path, hashes):
    single, sharded = _fixed_dirs(tmp_path)
    assert identity.legacy_base_identity(single) is None and identity.legacy_base_identity(sharded) is None
    assert hashes == [], "found without hashing"


def test_another_copy_of_the_weights_is_not_part_of_the_identity(tmp_path, hashes):
    single, sharded = _fixed_dirs(tmp_path)
    (sharded / OTHER_COPY).write_bytes(b"another copy")
    assert base_identity(sharded) == GOLDEN["sharded"]
    assert hashes[-1] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert identity.legacy_base_identity(sharded) == GOLDEN["sharded+consolidated"], "what records made before hold"
    assert identity.legacy_base_identity(sharded) == GOLDEN["sharded+consolidated"] and len(hashes) == 2, "cached"


def test_a_base_with_and_without_the_other_copy_is_one_base(tmp_path, tiny_base):
    """The Hub fetch now leaves consolidated.safetensors out: a dir fetched so is the base a full snapshot is."""
    with_copy = _with_other_copy(shutil.copytree(tiny_base, tmp_path / "with-copy"))
    assert base_identity(with_copy) == base_identity(tiny_base)
    assert same_base(str(with_copy), str(tiny_base))


def test_records_holding_the_legacy_identity_still_match_their_base(tmp_path, tiny_base, tiny_loras, hashes):
    """A record registered on a dir holding another copy holds the digest of every file: the same base still."""
    base = _with_other_copy(shutil.copytree(tiny_base, tmp_path / "base"))
    adapter = noisy_copy(tiny_loras[0], tmp_path / "lora", seed=1, base_model_name_or_path=str(base))
    library = Library(tmp_path / "lib")
    record = library.add([adapter])[0]
    assert record.base_identity == base_identity(base)
    legacy = dataclasses.replace(record, base_identity=identity.legacy_base_identity(base))
    other = dataclasses.replace(record, base_identity="0" * 64)
    assert legacy.base_identity not in (None, record.base_identity)
    for spelling in (str(base), f"{base}/", str(tmp_path / "." / "base")):
        compatible, rejected = partition_compatible([legacy, other], spelling, "lora")
        assert compatible == [legacy] and "holds other weights than when" in rejected[0][1], spelling
    assert BaseMatcher(str(base), base_identity(base)).mismatch(legacy) is None  # the selection's base_id
    hashed = len(hashes)
    assert BaseMatcher(str(base)).mismatch(legacy) is None and len(hashes) == hashed, "from the identity cache"


def test_a_legacy_identity_does_not_match_another_base(tmp_path, tiny_base, tiny_loras, hashes):
    """With or without another copy of its own, another base is not the record's; one without hashes no second
    digest to find out."""
    base = _with_other_copy(shutil.copytree(tiny_base, tmp_path / "base"))
    adapter = noisy_copy(tiny_loras[0], tmp_path / "lora", seed=1, base_model_name_or_path=str(base))
    record = Library(tmp_path / "lib").add([adapter])[0]
    legacy = dataclasses.replace(record, base_identity=identity.legacy_base_identity(base))
    other = shutil.copytree(tiny_base, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-3}))
    hashed = len(hashes)
    assert "other content" in (BaseMatcher(str(other)).mismatch(legacy) or "")
    assert all(OTHER_COPY not in names for names in hashes[hashed:])
    _with_other_copy(other)
    assert "other content" in (BaseMatcher(str(other)).mismatch(legacy) or "")


def _legacy_record(tmp_path: Path, tiny_base: Path, tiny_loras: list[Path]) -> tuple[Path, object]:
    """A base dir holding another copy, and a record on it holding the digest every file gave before."""
    base = _with_other_copy(shutil.copytree(tiny_base, tmp_path / "base"))
    adapter = noisy_copy(tiny_loras[0], tmp_path / "lora", seed=1, base_model_name_or_path=str(base))
    record = Library(tmp_path / "lib").add([adapter])[0]
    return base, dataclasses.replace(record, base_identity=identity.legacy_base_identity(base))


def test_a_record_on_another_base_costs_no_legacy_digest_of_this_one(tmp_path, tiny_base, tiny_loras, hashes):
    """Matching a record of an unrelated base (another spelling, another identity) hashes nothing of this base's
    other copy: only a dir the record names, or this one spelled alike, can hold its legacy digest."""
    base = _with_other_copy(shutil.copytree(tiny_base, tmp_path / "base"))
    adapter = noisy_copy(tiny_loras[0], tmp_path / "lora", seed=1, base_model_name_or_path=str(tiny_base))
    foreign = dataclasses.replace(Library(tmp_path / "lib").add([adapter])[0], base_identity="0" * 64)
    matcher = BaseMatcher(str(base))
    hashed = len(hashes)
    assert "other content" in (matcher.mismatch(foreign) or "")
    assert all(OTHER_COPY not in names for names in hashes[hashed:]), hashes[hashed:]


def test_a_legacy_record_matches_its_base_spelled_as_another_dir(tmp_path, tiny_base, tiny_loras):
    """The record names the dir it was registered on (with the copy); selection names another dir of the same base
    (a fetch without the copy): the record's own dir shows its digest is that base's."""
    _, legacy = _legacy_record(tmp_path, tiny_base, tiny_loras)
    assert BaseMatcher(str(tiny_base)).mismatch(legacy) is None
    changed = shutil.copytree(tiny_base, tmp_path / "changed")
    config = json.loads((changed / "config.json").read_text())
    (changed / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-3}))
    assert "other content" in (BaseMatcher(str(changed)).mismatch(legacy) or "")


def test_a_dangling_other_copy_is_no_crash(tmp_path, tiny_base, tiny_loras):
    """The copy deleted from the HF cache leaves its link: the base still resolves; a legacy record no longer
    shows it is that base's (its digest cannot be computed) and is said to be on other weights, not a traceback."""
    base, legacy = _legacy_record(tmp_path, tiny_base, tiny_loras)
    (base / OTHER_COPY).unlink()
    (base / OTHER_COPY).symlink_to(tmp_path / "blob-gone")
    matcher = BaseMatcher(str(base))
    assert matcher.identity == base_identity(tiny_base)
    assert "holds other weights than when" in (matcher.mismatch(legacy) or "")


def test_the_score_cache_keys_a_base_by_the_files_transformers_loads(tmp_path, tiny_base):
    """Scores cached on a dir fetched with the other copy serve the dir once the copy is gone, and the other way."""
    from mashup.library.score_cache import fingerprint

    base = shutil.copytree(tiny_base, tmp_path / "base")
    before = fingerprint(base, [])
    _with_other_copy(base)
    assert fingerprint(base, []) == before
