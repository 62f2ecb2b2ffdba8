"""New file stats found for unchanged bytes are stored wherever a check found them, so the same bytes are hashed
once: a full fine-tune's entry stale for listing another copy's tensors (by ``fresh`` and by a re-scan), and a
registered dir a plain add is given again (refused as registered before it is hashed a second time)."""

import os

import pytest

from mashup.errors import AlreadyRegistered
from mashup.library import Library
from tests.library.helpers import noisy_copy
from tests.library.test_freshness_loaded_tensors import _as_registered_before, _full_with_other_copy


@pytest.fixture()
def stale_full(tmp_path, tiny_base, tiny_fulls):
    """A full fine-tune's entry listing another copy's tensors, its weights touched since (same bytes): (its
    parent dir, the library, the record)."""
    full = _full_with_other_copy(tiny_fulls[0], tmp_path / "fulls" / "full")
    library = Library(tmp_path / "lib")
    record = library.add([full], base=str(tiny_base))[0]
    _as_registered_before(library, record.id)
    os.utime(full / "model.safetensors", ns=(1, 1))  # same bytes, other mtime
    return full.parent, library, record


def _mtimes(library: Library, checkpoint_id: str) -> list[int]:
    (record,) = [r for r in library.entries()[0] if r.id == checkpoint_id]
    return [s["mtime_ns"] for s in record.file_stats if s["name"] == "model.safetensors"]


def test_fresh_stores_the_new_stats_of_an_entry_stale_for_its_tensors(stale_full, rehashed):
    _, library, record = stale_full
    for _ in range(3):
        fresh, stale = library.fresh(library.list())
        assert fresh == [] and [r.id for r, _ in stale] == [record.id]
    assert rehashed == ["full"], "hashed once, its new stats stored"
    assert _mtimes(library, record.id) == [1]


def test_a_rescan_stores_the_new_stats_of_an_entry_stale_for_its_tensors(stale_full, tiny_base, rehashed):
    root, library, record = stale_full
    for _ in range(2):
        again = library.add([root], base=str(tiny_base), recursive=True)
        assert list(again) == [] and [s.record.id for s in again.stale] == [record.id]
    assert rehashed == ["full"], "hashed once, its new stats stored"
    assert _mtimes(library, record.id) == [1]


def test_a_plain_add_of_a_registered_dir_with_new_stats_hashes_it_once(tmp_path, tiny_loras, rehashed, hashed):
    adapter = noisy_copy(tiny_loras[0], tmp_path / "a", seed=3)
    library = Library(tmp_path / "lib")
    record = library.add([adapter])[0]
    hashed.clear()
    os.utime(adapter / "adapter_model.safetensors", ns=(1, 1))  # same bytes, other mtime
    for _ in range(2):
        with pytest.raises(AlreadyRegistered, match=f"already registered as {record.id} ") as caught:
            library.add([adapter])
        assert caught.value.checkpoint_id == record.id and caught.value.where == record.path
    assert rehashed == ["a"] and hashed == [], "the freshness check's hash, not inspection's too; then a stat"
    assert library.get(record.id).file_stats[0]["mtime_ns"] == 1
