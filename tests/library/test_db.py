"""The SQLite policy shared by the catalog and the score cache: WAL, busy timeout, one-line errors, migration."""

import json
import os
import sqlite3

import pytest

import mashup.library.db as db
from mashup.errors import LibraryBusyError, LibraryError
from mashup.library import Library
from mashup.library.score_cache import ScoreCache

OLD_CATALOG_COLUMNS = ("id, kind, path, sha256, base_model, architecture, shapes, task, lora_r, lora_alpha, "
                       "target_modules, use_rslora, use_dora, init_reference, metadata, created")


def test_both_files_use_wal(tmp_path, tiny_loras):
    Library(tmp_path / "lib").add([tiny_loras[0]])
    ScoreCache(tmp_path / "lib").put("fp", [("sha", 1.0, 0.5, 4, 0.25)], target="t")
    for name in ("catalog.sqlite", "scores.sqlite"):
        with sqlite3.connect(tmp_path / "lib" / name) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_lock_contention_says_busy_not_corrupt(tmp_path, tiny_loras, monkeypatch):
    library = Library(tmp_path / "lib")
    library.add([tiny_loras[0]])
    ScoreCache(library.directory).put("fp", [("sha", 1.0, 0.5, 4, 0.25)])
    monkeypatch.setattr(db, "BUSY_TIMEOUT_S", 0.1)
    for name in ("catalog.sqlite", "scores.sqlite"):
        holder = sqlite3.connect(library.directory / name, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
        try:
            with pytest.raises(LibraryBusyError) as caught:
                if name == "catalog.sqlite":
                    library.add([tiny_loras[1]])
                else:
                    ScoreCache(library.directory).put("fp", [("sha2", 1.0, 0.5, 4, 0.25)])
            line = caught.value.line()
            assert line.startswith("library busy: another mashup process holds") and name in line
            assert "retry" in line and "move" not in line and "\n" not in line
            assert [r.id for r in library.list()] == [library.list()[0].id], "reads go on while a write is held"
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    library.add([tiny_loras[1]])
    assert len(library.list()) == 2


@pytest.mark.parametrize("name", ["catalog.sqlite", "scores.sqlite"])
def test_a_corrupt_file_is_one_line_saying_move_it_away(tmp_path, name):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / name).write_bytes(b"this is not a database" * 100)
    library, cache = Library(lib), ScoreCache(lib)
    calls = [library.list, lambda: library.get("abc")] if name == "catalog.sqlite" else \
        [lambda: cache.get("fp", ["sha"]), lambda: cache.put("fp", [("sha", 1.0, 0.5, 4, 0.1)]), cache.entries]
    for call in calls:
        with pytest.raises(LibraryError, match="not a SQLite database") as caught:
            call()
        assert "move it away" in caught.value.line() and "busy" not in caught.value.line()


def test_read_only_is_reported_as_permissions(tmp_path):
    path = tmp_path / "catalog.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.Error) as caught:
        conn.execute("INSERT INTO t VALUES (1)")
    line = db.describe_error(caught.value, path, "catalog").line()
    assert line == f"cannot write the catalog {path}; check permissions of the file and its dir"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_library_dir(tmp_path, tiny_loras):
    library = Library(tmp_path / "lib")
    library.add([tiny_loras[0]])
    os.chmod(library.db_path, 0o444)
    try:
        with pytest.raises(LibraryError, match="cannot write"):
            library.add([tiny_loras[1]])
    finally:
        os.chmod(library.db_path, 0o644)


def test_old_catalog_and_score_cache_are_read_then_migrated_in_place(tmp_path, tiny_loras):
    """A library written before the new columns: reads leave the file alone, the first write adds the columns."""
    lib = tmp_path / "lib"
    current = Library(tmp_path / "scratch").add([tiny_loras[0]], task="sciq")[0]
    lib.mkdir()
    with sqlite3.connect(lib / "catalog.sqlite") as conn:
        conn.execute(f"CREATE TABLE checkpoints ({OLD_CATALOG_COLUMNS}, PRIMARY KEY (id))")
        old = {k: v for k, v in current.to_dict().items() if k in OLD_CATALOG_COLUMNS.split(", ")}
        conn.execute(f"INSERT INTO checkpoints VALUES ({', '.join('?' * 16)})",
                     [json.dumps(v) if isinstance(v, (dict, list)) else v for v in old.values()])
    with sqlite3.connect(lib / "scores.sqlite") as conn:
        conn.execute("CREATE TABLE scores (checkpoint_sha TEXT, fingerprint TEXT, loss REAL, accuracy REAL, "
                     "n INTEGER, PRIMARY KEY (checkpoint_sha, fingerprint))")
        conn.execute("INSERT INTO scores VALUES (?, 'fp', 2.5, 0.25, 8)", (current.sha256,))
    before = (lib / "catalog.sqlite").read_bytes()
    library = Library(lib)
    (record,) = library.list()
    assert record.id == current.id and record.task == "sciq" and record.lineage == {} and record.file_stats == []
    assert (lib / "catalog.sqlite").read_bytes() == before
    fresh, stale = library.fresh([record])  # no stats recorded yet: hashed once, then stored
    assert [r.id for r in fresh] == [record.id] and not stale
    assert library.get(record.id).file_stats == current.file_stats
    library.add([tiny_loras[1]], lineage={"merged_from": [record.id]})
    assert [r.lineage for r in library.list()] == [{}, {"merged_from": [record.id]}]
    cache = ScoreCache(lib)
    assert cache.get("fp", [current.sha256]) == {current.sha256: (2.5, 0.25, 8, None, None, None)}
    cache.put("fp2", [(current.sha256, 1.0, 0.5, 8, 0.75)], target="arc_easy", sample={"seed": 0})
    assert cache.get("fp2", [current.sha256])[current.sha256].seconds == 0.75
    cache.put("fp3", [(current.sha256, 0.5, 0.5, 2, 0.1, [0.25, 0.75])])
    assert cache.get("fp3", [current.sha256])[current.sha256].losses == (0.25, 0.75)
    assert {e.target for e in cache.entries()} == {None, "arc_easy"}
