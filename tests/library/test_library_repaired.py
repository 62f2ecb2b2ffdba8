"""Adding the dir of a catalog entry that cannot be read repairs the entry, and the add says so: ``Added.repaired``,
and `library add` prints it as repaired, not added, with a line counting the repaired entries."""

import json
import logging
import sqlite3

import pytest

from mashup.library import Library
from tests.library.helpers import noisy_copy
from tests.test_cli import run_cli


@pytest.fixture()
def broken(tmp_path, tiny_loras):
    """A library of two adapters, the first one's row unreadable (its shapes not JSON), and a third adapter's dir,
    not registered."""
    library = Library(tmp_path / "lib")
    bad, good = library.add([noisy_copy(src, tmp_path / f"a{i}", seed=i) for i, src in enumerate(tiny_loras[:2])])
    with sqlite3.connect(library.db_path) as conn:
        conn.execute("UPDATE checkpoints SET shapes = ? WHERE id = ?", ("{not json", bad.id))
    return library, bad, good, noisy_copy(tiny_loras[2], tmp_path / "new", seed=2)


def test_an_add_says_which_of_the_added_repaired_an_unreadable_entry(broken, caplog):
    library, bad, good, new = broken
    with caplog.at_level(logging.WARNING, logger="mashup.library"):
        added = library.add([bad.path, new])
    assert [r.path for r in added] == [bad.path, str(new.resolve())]
    assert [r.id for r in added.repaired] == [bad.id] and added.relocated == [] and added.skipped == []
    assert f"replaced unreadable catalog entry {bad.id}" in caplog.text
    assert library.entries()[1] == [] and len(library.list()) == 3


def test_a_rescan_repairs_nothing(broken, tmp_path):
    library, bad, good, new = broken
    again = library.add([tmp_path], recursive=True)
    assert [r.path for r in again] == [str(new.resolve())] and again.repaired == []
    assert [entry.id for entry in library.entries()[1]] == [bad.id]


def test_cli_add_prints_a_repaired_entry_as_repaired_and_counts_it(broken, capsys, monkeypatch):
    library, bad, good, new = broken
    out, _ = run_cli(["library", "add", bad.path, new, "--library", library.directory], capsys, monkeypatch)
    lines = out.splitlines()
    assert lines[0] == f"repaired {bad.id} lora {bad.path}"
    assert lines[1].startswith("added ") and lines[1].endswith(f"lora {new.resolve()}")
    assert lines[2] == "repaired 1 unreadable catalog entry: registered afresh, with only this add's --task and " \
                       "--trained-on"
    assert len(lines) == 3


def test_cli_add_json_keeps_its_list_of_the_ids_added_repaired_ones_too(broken, capsys, monkeypatch):
    library, bad, good, new = broken
    out, _ = run_cli(["library", "add", bad.path, new, "--library", library.directory, "--json"], capsys,
                     monkeypatch)
    assert json.loads(out) == [bad.id, library.list()[-1].id]
