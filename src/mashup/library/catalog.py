"""The checkpoint library: an SQLite catalog inside a library directory."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path

from mashup.errors import LibraryError
from mashup.io import check_finite, weight_files
from mashup.library.records import CheckpointRecord, inspect_checkpoint

DB_NAME = "catalog.sqlite"
_JSON_FIELDS = ("shapes", "target_modules", "metadata")
_COLUMNS = (
    "id", "kind", "path", "sha256", "base_model", "architecture", "shapes", "task", "lora_r", "lora_alpha",
    "target_modules", "use_rslora", "use_dora", "init_reference", "metadata", "created",
)
_SCHEMA = f"CREATE TABLE IF NOT EXISTS checkpoints ({', '.join(_COLUMNS)}, PRIMARY KEY (id))"


def default_library_dir() -> Path:
    return Path(os.environ.get("MASHUP_LIBRARY") or Path.home() / ".mashup" / "library")


class Library:
    """A persistent catalog of checkpoints; every write is one transaction."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory else default_library_dir()
        self.db_path = self.directory / DB_NAME

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            with closing(sqlite3.connect(self.db_path)) as conn, conn:
                conn.execute(_SCHEMA)
                yield conn
        except sqlite3.DatabaseError as exc:
            raise LibraryError(f"cannot use the catalog ({exc})", str(self.db_path),
                               "check the --library dir; move a corrupt catalog away") from None

    def add(self, paths: Sequence[str | Path], *, task: str | None = None, base: str | None = None,
            init_reference: str | None = None, metadata: dict | None = None,
            allow_pickle: bool = False) -> list[CheckpointRecord]:
        """Register checkpoints; all are inspected first, so a bad one adds none."""
        records = []
        for path in paths:
            record = inspect_checkpoint(path, base=base, task=task, allow_pickle=allow_pickle)
            check_finite(weight_files(Path(path), allow_pickle=allow_pickle))
            record.id = record.sha256[:12]
            record.init_reference = init_reference
            record.metadata = dict(metadata or {})
            record.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
            records.append(record)
        ids = [r.id for r in records]
        if len(set(ids)) != len(ids):
            raise LibraryError("the same weights were given twice", None, "pass each checkpoint once")
        with self._connect() as conn:
            for record in records:
                existing = conn.execute("SELECT path FROM checkpoints WHERE id = ?", (record.id,)).fetchone()
                if existing:
                    raise LibraryError(f"already registered as {record.id} ({existing[0]})", record.path,
                                       "nothing to do, or remove the old entry first")
                conn.execute(f"INSERT INTO checkpoints VALUES ({', '.join('?' * len(_COLUMNS))})", _to_row(record))
        return records

    def _select(self, where: str = "", params: tuple = ()) -> list[CheckpointRecord]:
        with self._connect() as conn:
            rows = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM checkpoints {where} ORDER BY rowid",
                                params).fetchall()
        return [_from_row(row) for row in rows]

    def list(self, *, base: str | None = None, kind: str | None = None) -> list[CheckpointRecord]:
        records = self._select()
        return [r for r in records if (base is None or r.base_model == base) and (kind is None or r.kind == kind)]

    def get(self, checkpoint_id: str) -> CheckpointRecord:
        """Look up by id or unique id prefix."""
        matches = self._select("WHERE substr(id, 1, ?) = ?", (len(checkpoint_id), checkpoint_id)) if checkpoint_id else []
        if len(matches) != 1:
            problem = "no checkpoint" if not matches else f"{len(matches)} checkpoints match"
            raise LibraryError(f"{problem} with id '{checkpoint_id}'", str(self.directory),
                               "see `mashup library list` for ids")
        return matches[0]

    def remove(self, checkpoint_id: str) -> CheckpointRecord:
        """Drop the record; the files on disk are left alone."""
        record = self.get(checkpoint_id)
        with self._connect() as conn:
            conn.execute("DELETE FROM checkpoints WHERE id = ?", (record.id,))
        return record


def _to_row(record: CheckpointRecord) -> tuple:
    data = record.to_dict()
    return tuple(json.dumps(data[c]) if c in _JSON_FIELDS else data[c] for c in _COLUMNS)


def _from_row(row: Sequence) -> CheckpointRecord:
    data = {c: (json.loads(v) if c in _JSON_FIELDS and v is not None else v) for c, v in zip(_COLUMNS, row)}
    data["use_rslora"], data["use_dora"] = bool(data["use_rslora"]), bool(data["use_dora"])
    return CheckpointRecord(**data)
