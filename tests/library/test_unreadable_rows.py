"""A catalog row damaged or edited by hand is one LibraryError naming the record, the column and the
`library remove` that drops it: `list` leaves it out with a warning, `show` refuses it, `verify` reports it and
`remove` drops it."""

import json
import logging
import sqlite3

import pytest

from mashup.errors import LibraryError
from mashup.library import Library
from mashup.library.rows import UnreadableEntry
from tests.library.helpers import noisy_copy
from tests.test_cli import run_cli


@pytest.fixture()
def damaged(tmp_path, tiny_loras):
    """A library of two adapters, the first one's row to be damaged by the test."""
    library = Library(tmp_path / "lib")
    records = library.add([noisy_copy(src, tmp_path / f"a{i}", seed=i) for i, src in enumerate(tiny_loras[:2])])
    return library, records


def _damage(library: Library, record_id: str, column: str, value) -> None:
    with sqlite3.connect(library.db_path) as conn:
        conn.execute(f"UPDATE checkpoints SET {column} = ? WHERE id = ?", (value, record_id))


@pytest.mark.parametrize(("column", "value", "problem"), [
    ("shapes", "{not json", "column 'shapes' is not valid JSON: Expecting property name"),
    ("lineage", "[1, 2]", "column 'lineage' is [1, 2], expected an object or null"),
    ("kind", "adapter", "column 'kind' is \"adapter\", expected 'lora' or 'full'"),
    ("lora_r", "four", "column 'lora_r' is \"four\", expected an integer or null"),
    ("shapes", '{"a": "x"}', "column 'shapes' is {\"a\": \"x\"}, expected tensor names with their shapes"),
])
def test_an_unreadable_row_is_one_line_naming_record_column_and_fix(damaged, caplog, column, value, problem):
    library, (bad, good) = damaged
    _damage(library, bad.id, column, value)
    with pytest.raises(LibraryError) as caught:
        library.get(bad.id[:6])
    error = caught.value
    assert error.what.startswith(f"catalog entry {bad.id} cannot be read ({problem}")
    assert error.where == str(library.db_path) and "\n" not in str(error)
    assert error.fix == f"remove it with `mashup library remove {bad.id}` and register the checkpoint again"
    with caplog.at_level(logging.WARNING, logger="mashup.library"):
        assert [r.id for r in library.list()] == [good.id]
        assert [r.id for r in library.list()] == [good.id]
    assert [r.getMessage() for r in caplog.records] == [error.line()], "warned once per entry"


def test_an_unreadable_row_can_be_removed_and_registered_again(damaged):
    library, (bad, good) = damaged
    _damage(library, bad.id, "file_stats", "{oops")
    removed = library.remove(bad.id[:6])
    assert isinstance(removed, UnreadableEntry) and (removed.id, removed.path) == (bad.id, bad.path)
    assert library.entries() == ([library.get(good.id)], [])
    assert library.add([bad.path])[0].id == bad.id


def test_a_row_without_an_id_is_left_out_with_the_sql_that_deletes_it(damaged, caplog):
    library, (bad, good) = damaged
    _damage(library, bad.id, "id", None)
    with caplog.at_level(logging.WARNING, logger="mashup.library"):
        assert [r.id for r in library.list()] == [good.id]
    assert "catalog entry (no id) cannot be read (its id is null)" in caplog.text
    assert "DELETE FROM checkpoints WHERE id IS NULL" in caplog.text


def test_cli_list_show_verify_and_remove_on_an_unreadable_row(damaged, capsys, monkeypatch, caplog):
    library, (bad, good) = damaged
    _damage(library, bad.id, "shapes", "{not json")
    lib = library.directory
    with caplog.at_level(logging.WARNING, logger="mashup.library"):  # the CLI logs warnings to stderr
        out, _ = run_cli(["library", "list", "--library", lib, "--json"], capsys, monkeypatch)
    assert [r["id"] for r in json.loads(out)] == [good.id] and f"catalog entry {bad.id} cannot be read" in caplog.text
    _, err = run_cli(["library", "show", bad.id, "--library", lib], capsys, monkeypatch, expect=1)
    assert err.count("\n") == 1 and f"mashup library remove {bad.id}" in err
    out, _ = run_cli(["library", "verify", "--library", lib, "--json"], capsys, monkeypatch, expect=1)
    report = json.loads(out)
    assert (report["checked"], report["ok"], report["unreadable"]) == (1, 1, 1), "an unreadable row is not checked"
    assert [(p["id"], p["status"], p["path"]) for p in report["problems"]] == [(bad.id, "unreadable", bad.path)]
    out, _ = run_cli(["library", "verify", "--library", lib], capsys, monkeypatch, expect=1)
    assert "1 of 1 checkpoint ok; 1 unreadable entry not checked" in " ".join(out.split())
    _, err = run_cli(["library", "remove", bad.id, "--library", lib], capsys, monkeypatch)
    assert "".join(err.split()) == "".join(f"removed {bad.id} (files left at {bad.path})".split())  # rich wraps
    out, _ = run_cli(["library", "verify", "--library", lib], capsys, monkeypatch)
    assert out == "all 1 checkpoint verified: weights unchanged\n"



def test_a_rescan_keeps_an_unreadable_entry_and_says_how_to_replace_it(damaged, tmp_path, caplog):
    """A re-scan is not asked to repair: replacing the row would drop its task and lineage without a word."""
    library, (bad, good) = damaged
    _damage(library, bad.id, "shapes", "{not json")
    with caplog.at_level(logging.WARNING, logger="mashup.library"):
        again = Library(library.directory).add([tmp_path], recursive=True)
    assert again == [] and sorted(r.id for r in again.skipped) == sorted([bad.id, good.id])
    assert f"catalog entry {bad.id} cannot be read: skipped; add its dir alone to replace it" in caplog.text
    assert [entry.id for entry in library.entries()[1]] == [bad.id]


def test_adding_the_dir_of_an_unreadable_entry_again_replaces_it(damaged, caplog):
    library, (bad, good) = damaged
    _damage(library, bad.id, "lineage", "[1, 2]")
    with caplog.at_level(logging.WARNING, logger="mashup.library"):
        added = library.add([bad.path])
    assert [r.id for r in added] == [bad.id] and library.get(bad.id).lineage == {}
    assert [r.getMessage() for r in caplog.records] == [f"replaced unreadable catalog entry {bad.id}"]
    assert library.entries()[1] == [] and len(library.list()) == 2
    with pytest.raises(LibraryError, match=f"already registered as {bad.id}"):  # readable again: refused as before
        library.add([bad.path])


def test_cli_add_of_the_dir_alone_reports_a_replaced_unreadable_entry_as_added(damaged, capsys, monkeypatch,
                                                                               caplog):
    library, (bad, good) = damaged
    _damage(library, bad.id, "kind", "adapter")
    with caplog.at_level(logging.WARNING, logger="mashup.library"):
        out, _ = run_cli(["library", "add", bad.path, "--library", library.directory, "--json"], capsys,
                         monkeypatch)
    assert json.loads(out) == [bad.id]
    assert f"replaced unreadable catalog entry {bad.id}" in caplog.text
