"""A checkpoint moved on disk is registered again at its new dir: its entry is re-pointed there, keeping what it
holds (task, lineage, metadata, created); one whose old dir still exists is refused as before."""

import json
import logging
import os
import shutil

import pytest

from mashup.errors import LibraryError
from mashup.library import Library
from mashup.library.catalog import DB_NAME
from tests.library.helpers import noisy_copy
from tests.test_cli import run_cli


@pytest.fixture()
def registered(tmp_path, tiny_loras):
    """One adapter registered with a task, lineage and metadata: (the library, its record)."""
    library = Library(tmp_path / "lib")
    source = noisy_copy(tiny_loras[0], tmp_path / "old" / "adapter", seed=5)
    record, = library.add([source], task="alpha", metadata={"lr": 1e-4}, lineage={"trained_on": {"task": "alpha"}})
    return library, record


def test_adding_a_moved_checkpoint_relocates_its_entry_and_keeps_what_it_holds(tmp_path, registered, caplog):
    library, record = registered
    new = tmp_path / "elsewhere" / "adapter"
    new.parent.mkdir()
    shutil.copytree(record.path, new)  # another disk: other inodes, so other file stats
    shutil.rmtree(tmp_path / "old")
    with caplog.at_level(logging.WARNING, logger="mashup.library"):
        added = library.add([new], task="ignored")
    entry = library.get(record.id)
    assert [r.id for r in added] == [record.id] and [r.id for r in added.relocated] == [record.id]
    assert entry.path == str(new) and entry.file_stats != record.file_stats
    assert (entry.task, entry.metadata, entry.lineage, entry.created) == ("alpha", {"lr": 1e-4},
                                                                          record.lineage, record.created)
    assert f"checkpoint {record.id} moved: {record.path} -> {new} (its entry kept)" in caplog.text
    assert library.fresh([entry])[1] == [] and len(library.list()) == 1


def test_a_checkpoint_whose_old_dir_still_exists_is_refused_as_before(tmp_path, registered):
    library, record = registered
    shutil.copytree(record.path, tmp_path / "copy")
    with pytest.raises(LibraryError, match=f"already registered as {record.id}"):
        library.add([tmp_path / "copy"])
    assert library.get(record.id).path == record.path


def test_a_moved_adapter_with_other_settings_is_refused_and_nothing_is_written(tmp_path, registered, tiny_loras):
    library, record = registered
    os.rename(tmp_path / "old", tmp_path / "new")
    config_path = tmp_path / "new" / "adapter" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "lora_alpha": 99}))
    extra = noisy_copy(tiny_loras[0], tmp_path / "extra", seed=6)
    before = (library.directory / DB_NAME).read_bytes()
    with pytest.raises(LibraryError, match=f"registered as {record.id}, whose dir is gone, but .*lora_alpha"):
        library.add([extra, tmp_path / "new" / "adapter"])
    assert (library.directory / DB_NAME).read_bytes() == before  # all or none: the extra is not added either


def test_cli_add_of_a_moved_checkpoint_lists_it_as_added(tmp_path, registered, capsys, monkeypatch):
    library, record = registered
    os.rename(tmp_path / "old", tmp_path / "new")
    out, _ = run_cli(["library", "add", tmp_path / "new" / "adapter", "--library", library.directory, "--json"],
                     capsys, monkeypatch)
    assert json.loads(out) == [record.id]
    assert library.get(record.id).path == str(tmp_path / "new" / "adapter")


def test_cli_add_of_a_moved_checkpoint_says_relocated(tmp_path, registered, capsys, monkeypatch):
    library, record = registered
    os.rename(tmp_path / "old", tmp_path / "new")
    out, _ = run_cli(["library", "add", tmp_path / "new" / "adapter", "--library", library.directory], capsys,
                     monkeypatch)
    assert "".join(out.split()) == "".join(f"relocated {record.id} lora {tmp_path / 'new' / 'adapter'}".split())
