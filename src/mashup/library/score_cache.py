"""Relevance scores kept beside the catalog, so selection only scores checkpoints it has not seen.

Selection cost grows with the library; re-selecting for the same target sample (another k, another
merge method, after adding checkpoints) then costs only the new checkpoints. A score is keyed by the
checkpoint's weight digest and a fingerprint of exactly what was scored: the base model files and
the tokenized requests. Kept in its own SQLite file, so caching never touches catalog entries.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import closing
from pathlib import Path

from mashup.data.prompts import EncodedRequest
from mashup.io import weight_files

CACHE_NAME = "scores.sqlite"
_SCHEMA = ("CREATE TABLE IF NOT EXISTS scores (checkpoint_sha TEXT, fingerprint TEXT, loss REAL, accuracy REAL, "
           "n INTEGER, PRIMARY KEY (checkpoint_sha, fingerprint))")


def fingerprint(base_dir: Path, requests: Sequence[EncodedRequest]) -> str:
    """What the scores depend on: the base weights (by name, size and mtime) and every token scored."""
    digest = hashlib.sha256()
    for path in weight_files(base_dir):
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    for request in requests:
        digest.update(repr((request.prompt_ids, request.continuation_ids, request.answer)).encode())
    return digest.hexdigest()


class ScoreCache:
    def __init__(self, library_dir: Path) -> None:
        self.path = Path(library_dir) / CACHE_NAME

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path)
        conn.execute(_SCHEMA)
        return conn

    def get(self, key: str, checkpoint_shas: Iterable[str]) -> dict[str, tuple[float, float, int]]:
        """Cached ``(loss, accuracy, n)`` by checkpoint digest, for those present."""
        wanted = list(checkpoint_shas)
        with closing(self._connect()) as conn:
            rows = conn.execute("SELECT checkpoint_sha, loss, accuracy, n FROM scores WHERE fingerprint = ?",
                                (key,)).fetchall()
        return {sha: (loss, acc, n) for sha, loss, acc, n in rows if sha in wanted}

    def put(self, key: str, scores: Iterable[tuple[str, float, float, int]]) -> None:
        with closing(self._connect()) as conn, conn:
            conn.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?)",
                             [(sha, key, loss, acc, n) for sha, loss, acc, n in scores])
