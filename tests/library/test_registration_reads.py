"""What registration reads: each weight file's header once, per add the base's headers once (to fit a full
fine-tune's tensors against) or its model built once from config.json (to fit a LoRA's factors against), and a
re-scan records the stats of a dir it had to hash again (writing nothing when nothing changed)."""

import logging
import os
from pathlib import Path

import pytest

import mashup.io.headers as headers
import mashup.model_checks as model_checks
from mashup.errors import LibraryError
from mashup.library import Library
from tests.library.helpers import many_adapters, noisy_copy


@pytest.fixture()
def opened(monkeypatch):
    """Paths of the safetensors files whose header was parsed (``safe_open``)."""
    paths: list[Path] = []
    real = headers.safe_open
    monkeypatch.setattr(headers, "safe_open", lambda path, *args, **kwargs: paths.append(Path(path))
                        or real(path, *args, **kwargs))
    return paths


def test_registering_a_lora_parses_each_header_once(tmp_path, tiny_base, tiny_loras, opened):
    """Shapes and dtypes come from one parse; hashing reads the bytes (and checks them) without safe_open."""
    Library(tmp_path / "lib").add(tiny_loras[:2])
    assert sorted(p.parent for p in opened) == sorted(tiny_loras[:2]), "the base's model is built on meta instead"


def test_adding_full_fine_tunes_reads_the_base_headers_once(tmp_path, tiny_base, tiny_fulls, opened):
    Library(tmp_path / "lib").add(tiny_fulls, base=str(tiny_base))
    assert [p.parent for p in opened].count(tiny_base) == 1
    Library(tmp_path / "lib2").add(tiny_fulls[:1], base=str(tiny_base))
    assert [p.parent for p in opened].count(tiny_base) == 2, "read again by the next add: it may have changed"


def test_adding_loras_builds_the_base_model_once(tmp_path, tiny_base, tiny_loras, monkeypatch):
    """Its module names, not its files' (transformers 5 names some models' modules otherwise): built on meta."""
    built: list[Path] = []
    real = model_checks.model_on_meta
    monkeypatch.setattr(model_checks, "model_on_meta", lambda model_dir: built.append(Path(model_dir))
                        or real(model_dir))
    Library(tmp_path / "lib").add(tiny_loras, base=str(tiny_base))
    assert built == [tiny_base]


def _refuse_writes(*args, **kwargs):
    raise AssertionError("the catalog was written")


def test_a_rescan_stores_the_stats_of_a_dir_it_hashed_again(tmp_path, tiny_loras, rehashed, monkeypatch):
    root = tmp_path / "runs"
    many_adapters(tiny_loras[0], root, 2)
    library = Library(tmp_path / "lib")
    first = library.add([root], recursive=True)
    os.utime(root / "a0000" / "adapter_model.safetensors", ns=(1, 1))  # same bytes, other mtime
    again = library.add([root], recursive=True)
    assert again == [] and len(again.skipped) == 2 and rehashed == ["a0000"]
    assert library.get(first[0].id).file_stats[0]["mtime_ns"] == 1, "the new stats are stored"
    monkeypatch.setattr(Library, "_write", _refuse_writes)  # nothing changed: nothing written
    assert len(library.add([root], recursive=True).skipped) == 2
    assert rehashed == ["a0000"], "and not hashed again"


def test_a_rescan_of_registered_weights_found_elsewhere_stores_their_stats(tmp_path, tiny_loras, rehashed):
    registered = noisy_copy(tiny_loras[0], tmp_path / "registered", seed=1)
    library = Library(tmp_path / "lib")
    record = library.add([registered])[0]
    root = tmp_path / "runs"
    noisy_copy(tiny_loras[0], root / "copy", seed=1)  # the same weights, under the re-scanned dir
    os.utime(registered / "adapter_model.safetensors", ns=(1, 1))
    again = library.add([root], recursive=True)
    assert again == [] and [r.id for r in again.skipped] == [record.id] and rehashed == ["registered"]
    assert library.get(record.id).file_stats[0]["mtime_ns"] == 1


def test_a_rescan_of_a_read_only_library_with_new_stats_still_succeeds(tmp_path, tiny_loras, rehashed,
                                                                         monkeypatch, caplog):
    root = tmp_path / "runs"
    many_adapters(tiny_loras[0], root, 1)
    library = Library(tmp_path / "lib")
    library.add([root], recursive=True)
    os.utime(root / "a0000" / "adapter_model.safetensors", ns=(1, 1))

    def read_only(*args, **kwargs):
        raise LibraryError("read-only", str(library.db_path))

    monkeypatch.setattr(Library, "_write", read_only)
    with caplog.at_level(logging.WARNING, logger="mashup.library"):
        assert len(library.add([root], recursive=True).skipped) == 1
    assert "could not record re-checked file stats" in caplog.text
