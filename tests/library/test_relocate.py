"""A checkpoint moved on disk is registered again at its new dir: its entry is re-pointed there, keeping what it
holds (task, lineage, metadata, created) but what the add gives (task, init reference, data fingerprint), and an
init reference beside the old dir follows it; one whose old dir still exists is refused as before. A re-scan leaves
an unreadable entry whose dir is gone (skipped, with a warning); ``relocate`` writes only what it read in its write."""

import json
import logging
import os
import shutil
import sqlite3

import pytest

from mashup.errors import LibraryError
from mashup.library import Library
from mashup.library.catalog import DB_NAME
from safetensors.torch import load_file, save_file

from mashup.merging.compat import reference_key
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
        added = library.add([new])
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
    with pytest.raises(LibraryError, match=f"registered as {record.id} .*, but .*lora_alpha"):
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


def _lora_run(tiny_lora, run_dir):
    """An adapter in a training run's dir with its init weights beside it, as `mashup run` leaves them."""
    adapter = noisy_copy(tiny_lora, run_dir / "adapter", seed=5)
    tensors = load_file(adapter / "adapter_model.safetensors")
    save_file({k: v * 0 if "lora_B" in k else v for k, v in tensors.items()}, run_dir / "adapter_init.safetensors")
    return adapter


def test_a_moved_lora_s_init_reference_beside_it_moves_with_it(tmp_path, tiny_loras):
    library = Library(tmp_path / "lib")
    adapter = _lora_run(tiny_loras[0], tmp_path / "run1")
    record, = library.add([adapter], task="alpha", init_reference=str(tmp_path / "run1" / "adapter_init.safetensors"))
    (tmp_path / "run1").rename(tmp_path / "run2")
    library.add([tmp_path / "run2" / "adapter"])
    entry = library.get(record.id)
    assert (entry.task, entry.init_reference) == ("alpha", str(tmp_path / "run2" / "adapter_init.safetensors"))
    assert reference_key(entry, "task_arithmetic", "ab")  # a task-vector merge finds it


def test_relocating_keeps_an_init_reference_elsewhere_and_takes_what_the_add_gives(tmp_path, tiny_loras):
    library = Library(tmp_path / "lib")
    adapter = _lora_run(tiny_loras[0], tmp_path / "run1")
    shared = tmp_path / "inits" / "init.safetensors"
    shared.parent.mkdir()
    (tmp_path / "run1" / "adapter_init.safetensors").rename(shared)
    record, = library.add([adapter], task="alpha", init_reference=str(shared), data_fingerprint="f" * 64)
    (tmp_path / "run1").rename(tmp_path / "run2")
    library.relocate(record, tmp_path / "run2" / "adapter")
    assert (library.get(record.id).init_reference, library.get(record.id).task) == (str(shared), "alpha")
    (tmp_path / "run2").rename(tmp_path / "run3")
    other = tmp_path / "other.safetensors"
    shutil.copy(shared, other)
    library.add([tmp_path / "run3" / "adapter"], task="beta", init_reference=str(other), data_fingerprint="e" * 64)
    entry = library.get(record.id)
    assert (entry.task, entry.init_reference, entry.data_fingerprint) == ("beta", str(other), "e" * 64)
    assert (entry.created, entry.path) == (record.created, str(tmp_path / "run3" / "adapter"))


@pytest.mark.parametrize("damage", ["task = 5", "task = NULL, path = NULL"])
def test_a_rescan_skips_an_unreadable_entry_whose_dir_is_gone(tmp_path, registered, caplog, damage):
    library, record = registered
    with sqlite3.connect(library.db_path) as conn:
        conn.execute(f"UPDATE checkpoints SET {damage} WHERE id = ?", (record.id,))
    os.rename(tmp_path / "old", tmp_path / "new")
    with caplog.at_level(logging.WARNING, logger="mashup.library"):
        again = library.add([tmp_path / "new"], recursive=True)
    assert list(again) == [] and [r.id for r in again.skipped] == [record.id] and again.relocated == []
    assert f"catalog entry {record.id} cannot be read: skipped" in caplog.text


def test_relocate_writes_nothing_for_an_entry_removed_meanwhile(tmp_path, registered):
    library, record = registered
    os.rename(tmp_path / "old", tmp_path / "new")
    Library(library.directory).remove(record.id)  # another process
    assert library.relocate(record, tmp_path / "new" / "adapter").status == "ok" and library.list() == []


def test_relocate_leaves_an_entry_re_pointed_meanwhile(tmp_path, registered):
    library, record = registered
    os.rename(tmp_path / "old", tmp_path / "new")
    shutil.copytree(tmp_path / "new", tmp_path / "other")
    Library(library.directory).add([tmp_path / "other" / "adapter"])  # another process relocated it there
    library.relocate(record, tmp_path / "new" / "adapter")
    assert library.get(record.id).path == str(tmp_path / "other" / "adapter")


def test_cli_recursive_add_json_lists_the_relocated(tmp_path, registered, capsys, monkeypatch):
    library, record = registered
    os.rename(tmp_path / "old", tmp_path / "new")
    out, _ = run_cli(["library", "add", tmp_path / "new", "--recursive", "--library", library.directory, "--json"],
                     capsys, monkeypatch)
    assert json.loads(out) == {"added": [record.id], "skipped": [], "relocated": [record.id], "repaired": [],
                               "stale": []}


def test_repoint_re_points_an_entry_whose_dir_is_still_there(tmp_path, registered):
    library, record = registered
    shutil.copytree(tmp_path / "old", tmp_path / "copy")
    with pytest.raises(LibraryError, match="already registered"):
        library.add([tmp_path / "copy" / "adapter"])
    added = library.add([tmp_path / "copy" / "adapter"], repoint=[record.id])
    entry = library.get(record.id)
    assert [r.id for r in added] == [record.id] and [r.id for r in added.relocated] == [record.id]
    assert entry.path == str(tmp_path / "copy" / "adapter") and len(library.list()) == 1
    assert (entry.task, entry.metadata, entry.lineage, entry.created) == ("alpha", {"lr": 1e-4},
                                                                          record.lineage, record.created)


def test_relocate_of_a_copy_re_points_the_entry_only_when_asked(tmp_path, registered):
    library, record = registered
    shutil.copytree(tmp_path / "old", tmp_path / "copy")
    assert library.relocate(record, tmp_path / "copy" / "adapter").status == "ok"
    assert library.get(record.id).path == record.path  # its dir is there: a plain relocate leaves it
    assert library.relocate(record, tmp_path / "copy" / "adapter", copied=True).status == "ok"
    assert library.get(record.id).path == str(tmp_path / "copy" / "adapter")
