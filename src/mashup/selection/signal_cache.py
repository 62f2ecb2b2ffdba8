"""Prefilter values kept under the library dir in ``selection.sqlite`` (never in the catalog tables).

Arrow prototypes depend only on an adapter's weights; a target's signal values (first-order estimate,
Arrow affinity) depend on the weights and on exactly what was scored. Both are keyed by the weights'
key: the catalog digest plus each weight file's size and modification time, so an adapter whose bytes
change on disk after registration gets fresh values instead of stale ones.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from mashup.io import weight_files
from mashup.library import CheckpointRecord

CACHE_NAME = "selection.sqlite"
_CHUNK = 500  # keys per IN (...) query, under SQLite's variable limit
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS prototypes (weights_key TEXT PRIMARY KEY, data BLOB)",
    "CREATE TABLE IF NOT EXISTS signals (signal TEXT, fingerprint TEXT, weights_key TEXT, value REAL, "
    "PRIMARY KEY (signal, fingerprint, weights_key))",
)


def weights_key(record: CheckpointRecord, allow_pickle: bool = False) -> str:
    """The catalog digest plus the weight files' sizes and mtimes: changes when the bytes on disk do."""
    stats = [path.stat() for path in weight_files(Path(record.path), allow_pickle=allow_pickle)]
    return record.sha256 + "".join(f":{s.st_size}:{s.st_mtime_ns}" for s in stats)


class SignalCache:
    def __init__(self, library_dir: Path) -> None:
        self.path = Path(library_dir) / CACHE_NAME

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path)) as conn, conn:
            for statement in _SCHEMA:
                conn.execute(statement)
            yield conn

    def prototypes(self, keys: Iterable[str]) -> dict[str, dict[str, torch.Tensor]]:
        wanted = list(keys)
        rows = []
        with self._connect() as conn:
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start:start + _CHUNK]
                rows += conn.execute(f"SELECT weights_key, data FROM prototypes WHERE weights_key IN "
                                     f"({', '.join('?' * len(chunk))})", chunk).fetchall()
        return {key: {m: t.float() for m, t in load_bytes(data).items()} for key, data in rows}

    def put_prototypes(self, items: dict[str, dict[str, torch.Tensor]]) -> None:
        rows = [(key, save_bytes({m: t.half().contiguous() for m, t in vectors.items()}))
                for key, vectors in items.items()]
        with self._connect() as conn:
            conn.executemany("INSERT OR REPLACE INTO prototypes VALUES (?, ?)", rows)

    def signals(self, signal: str, fingerprint: str, keys: Iterable[str]) -> dict[str, float]:
        wanted = set(keys)
        with self._connect() as conn:
            rows = conn.execute("SELECT weights_key, value FROM signals WHERE signal = ? AND fingerprint = ?",
                                (signal, fingerprint)).fetchall()
        return {key: value for key, value in rows if key in wanted}

    def put_signals(self, signal: str, fingerprint: str, values: dict[str, float]) -> None:
        with self._connect() as conn:
            conn.executemany("INSERT OR REPLACE INTO signals VALUES (?, ?, ?, ?)",
                             [(signal, fingerprint, key, value) for key, value in values.items()])
