"""How a ``CheckpointRecord`` is stored as a catalog row, and read back.

Reading checks every column, so that a row damaged or edited by hand is one ``UnreadableEntry`` naming the record
and the column (and the ``library remove`` that drops it) rather than a traceback in every command that reads the
catalog.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mashup.errors import LibraryError
from mashup.library.db import select_rows
from mashup.library.freshness import Freshness
from mashup.library.records import CheckpointRecord, lora_config_change
from mashup.library.values import is_int, is_number, shown

logger = logging.getLogger(__name__)

# new columns go at the end: older catalogs get them by ALTER TABLE ADD COLUMN
COLUMNS = {
    "id": "", "kind": "", "path": "", "sha256": "", "base_model": "", "architecture": "", "shapes": "", "task": "",
    "lora_r": "", "lora_alpha": "", "target_modules": "", "use_rslora": "", "use_dora": "", "init_reference": "",
    "metadata": "", "created": "", "file_stats": "TEXT", "base_identity": "TEXT", "data_fingerprint": "TEXT",
    "lineage": "TEXT", "narrowing": "TEXT",
}
JSON_FIELDS = ("shapes", "target_modules", "metadata", "file_stats", "lineage", "narrowing")


class UnreadableEntry(LibraryError):
    """A catalog row that cannot be read as a record; ``id`` and ``path`` as far as the row gives them."""

    def __init__(self, row: dict[str, Any], problem: str, catalog: str) -> None:
        raw_id, path = row.get("id"), row.get("path")
        self.id = "" if raw_id is None else str(raw_id)
        self.path = path if isinstance(path, str) else None
        fix = (f"remove it with `mashup library remove {self.id}` and register the checkpoint again" if self.id else
               f"delete it: sqlite3 {catalog} \"DELETE FROM checkpoints WHERE id IS NULL OR id = ''\"")
        super().__init__(f"catalog entry {self.id or '(no id)'} cannot be read ({problem})", catalog, fix)


class StaleEntry(LibraryError):
    """A registration found stale by an add (its files changed, or its record no longer matches them): ``record``,
    the entry; ``check``, the freshness check that found it so (its new stats are stored); the line names the dir
    the add found, why, and the fix: by default the ``library remove`` that lets it be added again."""

    def __init__(self, record: CheckpointRecord, what: str, found: str, check: Freshness | None = None,
                 fix: str | None = None) -> None:
        self.record, self.check = record, check
        super().__init__(what, found, fix or f"`mashup library remove {record.id}`, then add it again")

    def skipped_line(self) -> str:
        """The warning of a re-scan that skips ``where`` instead of stopping."""
        return f"skipped {self.where}: {self.what}; {self.fix}"


def _anything(v: Any) -> bool:
    return True


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _optional(valid: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or valid(v)


def _shapes(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(s, list) and all(map(is_int, s)) for s in v.values())


def _texts(v: Any) -> bool:
    return isinstance(v, list) and all(map(_text, v))


def _stats(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, dict) for s in v)


# each column's check, on the value as read (JSON columns parsed) and what the error says it should be
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "kind": (lambda v: v in ("lora", "full"), "'lora' or 'full'"),
    "path": (lambda v: isinstance(v, str) and bool(v), "a path"), "sha256": (_text, "a digest"),
    "base_model": (_text, "a base model"), "architecture": (_optional(_text), "text"),
    "shapes": (_shapes, "tensor names with their shapes"), "task": (_optional(_text), "a task or null"),
    "lora_r": (_optional(is_int), "an integer or null"), "lora_alpha": (_optional(is_number), "a number or null"),
    "target_modules": (_optional(_texts), "a list of module names or null"),
    "use_rslora": (_optional(is_int), "0 or 1"), "use_dora": (_optional(is_int), "0 or 1"),
    "init_reference": (_optional(_text), "a path or null"), "created": (_optional(_text), "a time"),
    "metadata": (_optional(lambda v: isinstance(v, dict)), "an object or null"),
    "file_stats": (_optional(_stats), "a list of file stats or null"),
    "base_identity": (_optional(_text), "a digest or null"), "data_fingerprint": (_optional(_text), "a digest or null"),
    "lineage": (_optional(lambda v: isinstance(v, dict)), "an object or null"),
    "narrowing": (_optional(lambda v: isinstance(v, dict)), "an object or null"),
}


def to_row(record: CheckpointRecord) -> tuple:
    values = ((c, getattr(record, c)) for c in COLUMNS)  # not to_dict(): its deep copy is slow at 1,000 records
    return tuple(json.dumps(v) if c in JSON_FIELDS else v for c, v in values)


def from_row(row: dict[str, Any], catalog: str) -> CheckpointRecord:
    """The record a row holds (``catalog``: the file, for the error), or an ``UnreadableEntry``."""
    if not isinstance(row.get("id"), str) or not row["id"]:
        raise UnreadableEntry(row, f"its id is {shown(row.get('id'))}", catalog)
    data = {}
    for column, value in row.items():
        try:
            data[column] = json.loads(value) if column in JSON_FIELDS and value is not None else value
        except (TypeError, ValueError) as exc:
            raise UnreadableEntry(row, f"column '{column}' is not valid JSON: {exc}", catalog) from None
        valid, expected = _CHECKS.get(column, (_anything, ""))
        if not valid(data[column]):
            raise UnreadableEntry(row, f"column '{column}' is {shown(data[column])}, expected {expected}", catalog)
    data["use_rslora"], data["use_dora"] = bool(data["use_rslora"]), bool(data["use_dora"])
    data["metadata"], data["lineage"] = data["metadata"] or {}, data["lineage"] or {}
    data["file_stats"] = data["file_stats"] or []
    return CheckpointRecord(**data)


def read_rows(rows: list[dict[str, Any]], catalog: str) -> tuple[list[CheckpointRecord], list[UnreadableEntry]]:
    """The records ``rows`` hold, and an ``UnreadableEntry`` for each row that cannot be read as one."""
    records, unreadable = [], []
    for row in rows:
        try:
            records.append(from_row(row, catalog))
        except UnreadableEntry as exc:
            unreadable.append(exc)
    return records, unreadable


def unreadable_ids(conn: sqlite3.Connection, ids: Iterable[str], catalog: str) -> set[str]:
    """Which of ``ids`` name a row that cannot be read as a record (only those rows are read)."""
    found = set()
    for checkpoint_id in ids:
        rows = select_rows(conn, "checkpoints", list(COLUMNS), "WHERE id = ?", (checkpoint_id,))
        if read_rows(rows, catalog)[1]:
            found.add(checkpoint_id)
    return found


def relocate_rows(conn: sqlite3.Connection, moved: list[CheckpointRecord], catalog: str, *, skip_stale: bool = False
                  ) -> tuple[list[CheckpointRecord], list[StaleEntry]]:
    """Re-point the entries of ``moved``'s ids (whose dirs are gone, or copied) at ``moved``'s paths, with their new
    file stats, keeping everything else they hold (lineage, metadata, created) but what the add gave (see
    ``moved_entry``): the entries as they now read. An entry whose LoRA settings differ from the config found is
    stale (the same weights under other settings compute something else): raised, or with ``skip_stale`` left as
    it is and returned."""
    relocated, stale = [], []
    for record in moved:
        entry = from_row(select_rows(conn, "checkpoints", list(COLUMNS), "WHERE id = ?", (record.id,))[0], catalog)
        kept = moved_entry(entry, record)
        change = lora_config_change(kept) if kept.kind == "lora" else None
        if change:
            error = StaleEntry(entry, f"registered as {entry.id} ({entry.path}), but {change}", record.path)
            if not skip_stale:
                raise error
            stale.append(error)
            continue
        conn.execute("UPDATE checkpoints SET path = ?, file_stats = ?, task = ?, init_reference = ?, "
                     "data_fingerprint = ? WHERE id = ?", (kept.path, json.dumps(kept.file_stats), kept.task,
                                                           kept.init_reference, kept.data_fingerprint, kept.id))
        relocated.append(kept)
    return relocated, stale


def moved_entry(kept: CheckpointRecord, record: CheckpointRecord) -> CheckpointRecord:
    """``kept`` (an entry whose dir is gone, or copied) at ``record``'s path and file stats; the task, init reference
    and data fingerprint the add gave (not null) replace the entry's. An init reference beside the old dir (a
    training run's ``adapter_init.safetensors``) moved along with it: the same file beside the new dir, when there."""
    init = record.init_reference or kept.init_reference
    old_parent, new_parent = Path(kept.path).parent, Path(record.path).parent
    if not record.init_reference and init and Path(init).is_relative_to(old_parent):
        beside = new_parent / Path(init).relative_to(old_parent)
        init = str(beside) if beside.exists() else init
    return dataclasses.replace(kept, path=record.path, file_stats=record.file_stats, task=record.task or kept.task,
                               init_reference=init, data_fingerprint=record.data_fingerprint or kept.data_fingerprint)


def log_insert(replaced: set[str], unreadable: set[str], relocated: list[tuple[str, CheckpointRecord]]) -> None:
    """Warn of the entries an add replaced (unreadable), left (unreadable, in a re-scan) and re-pointed: moved (the
    old dir gone: a warning) or on request (``Library.add``'s ``repoint``, the old dir still there: info)."""
    for checkpoint_id in sorted(replaced):
        logger.warning("replaced unreadable catalog entry %s", checkpoint_id)
    for checkpoint_id in sorted(unreadable):
        logger.warning("catalog entry %s cannot be read: skipped; add its dir alone to replace it (with its "
                       "--task), or `mashup library remove %s`", checkpoint_id, checkpoint_id)
    for old, record in relocated:
        if Path(old).is_dir():
            logger.info("checkpoint %s re-pointed: %s -> %s (its entry kept)", record.id, old, record.path)
        else:
            logger.warning("checkpoint %s moved: %s -> %s (its entry kept)", record.id, old, record.path)
