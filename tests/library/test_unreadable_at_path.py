"""A catalog entry that cannot be read, at a dir that holds other weights since: a plain add of the dir repairs it
(replaces it, so the path keeps one entry), as adding its checkpoint again repairs one of the same weights; a
re-scan leaves it, and the dir, as they are, with a warning (it repairs nothing)."""

import logging
import shutil
import sqlite3

import pytest

from mashup.library import Library
from tests.library.helpers import noisy_copy
from tests.test_cli import run_cli


@pytest.fixture()
def overwritten(tmp_path, tiny_loras):
    """An adapter registered, its row made unreadable, then other weights written at its dir: (the library, the
    old record, the dir)."""
    adapter = noisy_copy(tiny_loras[0], tmp_path / "runs" / "a", seed=1)
    library = Library(tmp_path / "lib")
    old = library.add([adapter])[0]
    with sqlite3.connect(library.db_path) as conn:
        conn.execute("UPDATE checkpoints SET shapes = ? WHERE id = ?", ("{not json", old.id))
    shutil.rmtree(adapter)
    noisy_copy(tiny_loras[0], adapter, seed=2)
    return library, old, adapter


def _rows(library: Library) -> list[tuple[str, str]]:
    with sqlite3.connect(library.db_path) as conn:
        return conn.execute("SELECT id, path FROM checkpoints ORDER BY rowid").fetchall()


def test_a_plain_add_replaces_an_unreadable_entry_at_its_path(overwritten, caplog):
    library, old, adapter = overwritten
    with caplog.at_level(logging.WARNING, logger="mashup.library"):
        added = library.add([adapter])
    (new,) = added
    assert new.id != old.id and [r.id for r in added.repaired] == [new.id]
    assert _rows(library) == [(new.id, str(adapter.resolve()))], "one entry at the path"
    assert f"replaced unreadable catalog entry {old.id}" in caplog.text


def test_cli_prints_it_as_repaired(overwritten, capsys, monkeypatch):
    library, old, adapter = overwritten
    out, _ = run_cli(["library", "add", adapter, "--library", library.directory], capsys, monkeypatch)
    (new,) = library.list()
    assert out.splitlines()[0] == f"repaired {new.id} lora {adapter.resolve()}"


def test_a_rescan_leaves_an_unreadable_entry_and_its_dir_with_a_warning(overwritten, tiny_loras, caplog):
    library, old, adapter = overwritten
    other = noisy_copy(tiny_loras[0], adapter.parent / "b", seed=3)
    with caplog.at_level(logging.WARNING, logger="mashup.library"):
        again = library.add([adapter.parent], recursive=True)
    assert [r.path for r in again] == [str(other.resolve())] and again.repaired == []
    assert [r[0] for r in _rows(library)] == [old.id, again[0].id], "no second entry at the unreadable one's path"
    assert f"catalog entry {old.id} cannot be read: skipped; add its dir alone to replace it" in caplog.text


def test_a_rescan_of_an_unreadable_entrys_dir_whose_digest_cannot_be_read_goes_on(tmp_path, tiny_loras):
    """Its row's sha256 not text: the re-scan skips the dir with the warning, rather than refusing it as registered."""
    root = tmp_path / "runs"
    library = Library(tmp_path / "lib")
    old = library.add([noisy_copy(tiny_loras[0], root / "a", seed=1)])[0]
    with sqlite3.connect(library.db_path) as conn:
        conn.execute("UPDATE checkpoints SET sha256 = NULL WHERE id = ?", (old.id,))
    other = noisy_copy(tiny_loras[0], root / "b", seed=2)
    again = library.add([root], recursive=True)
    assert [r.path for r in again] == [str(other.resolve())]
    assert [r[0] for r in _rows(library)] == [old.id, again[0].id]


def test_a_rescan_does_not_relocate_an_entry_onto_an_unreadable_entrys_path(tmp_path, tiny_loras):
    """Unreadable X at P; Y, registered at a dir since gone, now at P: relocating Y there left two entries at P,
    and the warning's "add its dir alone to replace it" then failed (already registered)."""
    runs = tmp_path / "runs"
    library = Library(tmp_path / "lib")
    unreadable = library.add([noisy_copy(tiny_loras[0], runs / "P", seed=1)])[0]
    with sqlite3.connect(library.db_path) as conn:
        conn.execute("UPDATE checkpoints SET shapes = ? WHERE id = ?", ("{not json", unreadable.id))
    moving = library.add([noisy_copy(tiny_loras[0], tmp_path / "elsewhere" / "Q", seed=2)])[0]
    shutil.rmtree(runs / "P")
    shutil.move(str(tmp_path / "elsewhere" / "Q"), str(runs / "P"))
    assert list(library.add([runs], recursive=True)) == []
    assert sorted(_rows(library)) == sorted([(unreadable.id, str(runs / "P")), (moving.id, moving.path)])
    (repaired,) = library.add([runs / "P"])  # what the warning says to do
    assert repaired.id == moving.id and _rows(library) == [(moving.id, str(runs / "P"))]
