"""One policy for the library's SQLite files (catalog and score cache).

WAL mode, so readers never block the writer and a killed writer cannot corrupt the file; a busy
timeout, so concurrent commands wait for each other instead of failing; write transactions that take
the write lock up front (``BEGIN IMMEDIATE``), so a waiting writer never fails half-way; and every
SQLite or file-system error as one line that tells contention, corruption and permissions apart.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from mashup.errors import LibraryBusyError, LibraryError

BUSY_TIMEOUT_S = 30.0  # how long a command waits for another one's write transaction


def describe_error(exc: sqlite3.Error | OSError, path: Path, what: str) -> LibraryError:
    """The one-line error for a failure on the SQLite file ``path`` (``what``: 'catalog', 'score cache')."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    if isinstance(exc, sqlite3.Error) and _is_busy(exc):
        return LibraryBusyError(f"library busy: another mashup process holds {path} (waited {BUSY_TIMEOUT_S:g} s)",
                                None, "retry when it has finished")
    if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
        keep = "a new, empty catalog is made on the next add" if what == "catalog" else \
            "it is only a cache, so deleting it is safe"
        return LibraryError(f"not a SQLite database (or corrupt): the {what} {path}", None,
                            f"move it away ({keep})")
    if name.startswith(("SQLITE_READONLY", "SQLITE_PERM")) or isinstance(exc, PermissionError):
        return LibraryError(f"cannot write the {what} {path}", None, "check permissions of the file and its dir")
    if name.startswith("SQLITE_CANTOPEN"):
        return LibraryError(f"cannot open the {what} {path}", None, "check that its dir exists and is writable")
    if name == "SQLITE_FULL":
        return LibraryError(f"disk full while writing the {what} {path}", None, "free some space and retry")
    detail = f"{type(exc).__name__}: {text}".splitlines()[0]
    return LibraryError(f"cannot use the {what} {path} ({detail})", None, "check the --library dir and its disk")


@contextmanager
def read_connection(path: Path, what: str) -> Iterator[sqlite3.Connection | None]:
    """A connection for reading, or None when the file does not exist yet (nothing is created)."""
    if not path.exists():
        yield None
        return
    try:
        with closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)) as conn:
            yield conn
    except sqlite3.Error as exc:
        raise describe_error(exc, path, what) from None


def _is_busy(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in str(exc)


def _begin_immediate(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode holding the write lock.

    SQLite's busy handler does not cover every race: switching a brand-new file to WAL, or opening it
    while another process recovers its WAL, answers SQLITE_BUSY at once. So the whole step is retried
    here, with backoff, until the same deadline the busy timeout gives.
    """
    deadline, delay = time.monotonic() + BUSY_TIMEOUT_S, 0.005
    while True:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")  # persistent: set once per file
            conn.execute("BEGIN IMMEDIATE")
            return conn
        except sqlite3.Error as exc:
            conn.close()
            if not _is_busy(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 0.25)


@contextmanager
def write_transaction(path: Path, what: str, setup: Callable[[sqlite3.Connection], None]
                      ) -> Iterator[sqlite3.Connection]:
    """One write transaction, committed if the block succeeds and rolled back otherwise.

    ``setup`` creates or migrates the schema inside the same transaction.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise describe_error(exc, path, what) from None
    try:
        with closing(_begin_immediate(path)) as conn:
            setup(conn)
            yield conn
            conn.execute("COMMIT")  # without it, closing rolls the transaction back
    except sqlite3.Error as exc:
        raise describe_error(exc, path, what) from None


def table_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def ensure_table(conn: sqlite3.Connection, table: str, columns: dict[str, str], primary_key: str) -> None:
    """Create ``table``, or add the columns an older version of it lacks (ALTER TABLE ADD COLUMN)."""
    existing = table_columns(conn, table)
    if not existing:
        spec = ", ".join(f"{name} {sql_type}" for name, sql_type in columns.items())
        conn.execute(f"CREATE TABLE {table} ({spec}, PRIMARY KEY ({primary_key}))")
        return
    for name, sql_type in columns.items():
        if name not in existing:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")


def select_rows(conn: sqlite3.Connection | None, table: str, columns: list[str], where: str = "",
                params: tuple = ()) -> list[dict]:
    """Rows as dicts with every asked column, None for columns an older schema lacks (no migration needed)."""
    if conn is None:
        return []
    existing = set(table_columns(conn, table))
    if not existing:
        return []
    select = ", ".join(c if c in existing else f"NULL AS {c}" for c in columns)
    rows = conn.execute(f"SELECT {select} FROM {table} {where}", params).fetchall()
    return [dict(zip(columns, row)) for row in rows]
