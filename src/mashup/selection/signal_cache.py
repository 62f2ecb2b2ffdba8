"""Prefilter values kept under the library dir in ``selection.sqlite`` (never in the catalog tables).

Arrow prototypes depend only on an adapter's weights; a target's signal values (first-order estimate,
Arrow affinity) depend on the weights and on exactly what was scored. Both are keyed by the weights'
key: the catalog digest plus each weight file's size and modification time, so an adapter whose bytes
change on disk after registration gets fresh values instead of stale ones.

The file follows the library's SQLite policy (``library.db``: WAL, a busy timeout, one-line errors), and
being a cache, a failure to use it is one warning, not an error: the prefilter computes what it lacks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np
import torch

from mashup.errors import LibraryError
from mashup.io import weight_files
from mashup.library import CheckpointRecord
from mashup.library.db import read_connection, table_columns, write_transaction
from mashup.selection.arrow import Layout

logger = logging.getLogger(__name__)
CACHE_NAME = "selection.sqlite"
WHAT = "prefilter cache"
_CHUNK = 500  # keys per IN (...) query, under SQLite's variable limit
_SCHEMA = (
    # prototypes were once stored per module (a safetensors blob of 210 tensors for SmolLM2, 2 ms each to load):
    # now one float16 row per adapter, tagged with the layout it was cut for; the old table is dropped (a cache)
    "DROP TABLE IF EXISTS prototypes",
    "CREATE TABLE IF NOT EXISTS prototype_rows (weights_key TEXT PRIMARY KEY, layout TEXT, data BLOB)",
    "CREATE TABLE IF NOT EXISTS signals (signal TEXT, fingerprint TEXT, weights_key TEXT, value REAL, "
    "PRIMARY KEY (signal, fingerprint, weights_key))",
)


def _setup(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA:
        conn.execute(statement)


def _layout_tag(layout: Layout) -> str:
    return hashlib.sha256(json.dumps([list(entry) for entry in layout]).encode()).hexdigest()[:16]


def _row_bytes(layout: Layout) -> int:
    return 2 * sum(in_features for _, in_features in layout)  # float16


def weights_key(record: CheckpointRecord, allow_pickle: bool = False) -> str:
    """The catalog digest plus the weight files' sizes and mtimes, and a LoRA's settings (the first-order value
    scales with alpha): changes when the bytes on disk or what they compute do."""
    stats = [path.stat() for path in weight_files(Path(record.path), allow_pickle=allow_pickle)]
    key = record.sha256 + "".join(f":{s.st_size}:{s.st_mtime_ns}" for s in stats)
    return key if record.applies is None else f"{key}:{record.applies}"


class SignalCache:
    """The prefilter's values under a library dir. A cache: where it cannot be read or written (a read-only
    library, a corrupt file, another process holding it past the busy timeout) that is one warning, and the
    cache is off for the rest of this object's life: reads find nothing, writes keep nothing."""

    def __init__(self, library_dir: Path) -> None:
        self.path = Path(library_dir) / CACHE_NAME
        self.usable = True

    def _reading(self, table: str) -> AbstractContextManager[sqlite3.Connection | None]:
        """A connection to read ``table`` with, or None where there is nothing to read (no file or table yet,
        or the cache is off)."""
        return self._guarded(lambda: read_connection(self.path, WHAT), table)

    def _writing(self) -> AbstractContextManager[sqlite3.Connection | None]:
        """A write transaction (the schema made or migrated first), or None where the cache is off."""
        return self._guarded(lambda: write_transaction(self.path, WHAT, _setup))

    @contextmanager
    def _guarded(self, connect: Callable[[], AbstractContextManager[sqlite3.Connection | None]],
                 table: str | None = None) -> Iterator[sqlite3.Connection | None]:
        """``connect()``'s connection (None without ``table`` in it), or None where the cache is off; a failure
        (LibraryError) turns the cache off with one warning, and a block it came before runs with None."""
        if not self.usable:
            yield None
            return
        entered = False
        try:
            with connect() as conn:
                usable = conn is not None and (table is None or bool(table_columns(conn, table)))
                entered = True
                yield conn if usable else None
        except LibraryError as exc:
            self._turn_off(exc)
            if not entered:
                yield None

    def _turn_off(self, exc: LibraryError) -> None:
        self.usable = False
        logger.warning("%s; the prefilter goes on without its cache", exc)

    def prototype_keys(self, keys: Iterable[str], layout: Layout) -> set[str]:
        """The given weights keys with a cached row cut for ``layout`` (found without reading the rows)."""
        wanted, tag, size = list(keys), _layout_tag(layout), _row_bytes(layout)
        found: set[str] = set()
        with self._reading("prototype_rows") as conn:
            for start in range(0, len(wanted) if conn is not None else 0, _CHUNK):
                chunk = wanted[start:start + _CHUNK]
                found.update(key for (key,) in conn.execute(
                    f"SELECT weights_key FROM prototype_rows WHERE layout = ? AND length(data) = ? AND weights_key "
                    f"IN ({', '.join('?' * len(chunk))})", [tag, size, *chunk]))
        return found

    def prototype_blocks(self, keys: Iterable[str], layout: Layout,
                         rows: int) -> Iterator[tuple[list[str], torch.Tensor]]:
        """The cached rows (float16, ``layout`` order) of the given weights keys, at most ``rows`` at a time as
        (keys, [n, features] block): a library's rows are never all in memory (2.3 MB an adapter of a 7B Llama).
        Keys without a row cut for ``layout`` are left out."""
        wanted, tag, size = list(keys), _layout_tag(layout), _row_bytes(layout)
        step = max(1, min(rows, _CHUNK))
        with self._reading("prototype_rows") as conn:
            for start in range(0, len(wanted) if conn is not None else 0, step):
                chunk = wanted[start:start + step]
                cursor = conn.execute(f"SELECT weights_key, data FROM prototype_rows WHERE layout = ? AND "
                                      f"length(data) = ? AND weights_key IN ({', '.join('?' * len(chunk))})",
                                      [tag, size, *chunk])
                block, found = np.empty((len(chunk), size // 2), dtype=np.float16), []
                for key, data in cursor:  # row by row into the block: one blob in memory at a time
                    block[len(found)] = np.frombuffer(data, dtype=np.float16)
                    found.append(key)
                if found:
                    yield found, torch.from_numpy(block[:len(found)])

    def prototypes(self, keys: Iterable[str], layout: Layout) -> dict[str, torch.Tensor]:
        """``prototype_blocks`` as one dict, weights key -> row: for a few keys."""
        return {key: row for found, block in self.prototype_blocks(keys, layout, _CHUNK)
                for key, row in zip(found, block)}

    def put_prototypes(self, items: dict[str, torch.Tensor], layout: Layout) -> None:
        """Store each weights key's prototype row (its modules' vectors back to back in ``layout`` order)."""
        tag = _layout_tag(layout)
        rows = [(key, tag, row.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
                for key, row in items.items()]
        with self._writing() as conn:
            if conn is not None:
                conn.executemany("INSERT OR REPLACE INTO prototype_rows VALUES (?, ?, ?)", rows)

    def signals(self, signal: str, fingerprint: str, keys: Iterable[str]) -> dict[str, float]:
        """The cached values of ``signal`` for this target sample, by weights key (a NaN, kept as NULL, reads
        as missing; +inf reads back as itself: the prefilter's ``NO_VALUE``, a value known to be lacking)."""
        wanted, rows = set(keys), []
        with self._reading("signals") as conn:
            if conn is not None:
                rows = conn.execute("SELECT weights_key, value FROM signals WHERE signal = ? AND fingerprint = ?",
                                    (signal, fingerprint)).fetchall()
        return {key: value for key, value in rows if key in wanted and value is not None}

    def put_signals(self, signal: str, fingerprint: str, values: dict[str, float]) -> None:
        with self._writing() as conn:
            if conn is not None:
                conn.executemany("INSERT OR REPLACE INTO signals VALUES (?, ?, ?, ?)",
                                 [(signal, fingerprint, key, value) for key, value in values.items()])
