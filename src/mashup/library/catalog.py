"""The checkpoint library: an SQLite catalog inside a library directory (see library.db for its policy)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Collection, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from mashup.errors import LibraryError, MashupError
from mashup.library.base_shapes import BaseShapes
from mashup.library.db import ensure_table, read_connection, select_rows, write_transaction
from mashup.library.freshness import Freshness, check_freshness, parallel_map
from mashup.library.identity import BaseMatcher
from mashup.library.lineage import FINGERPRINT_PREFIX_MIN, trained_on_ids
from mashup.library.records import CheckpointRecord, discover_checkpoints, inspect_to_register
from mashup.library.registration import (Added, Progress, check_at_paths, checks_of_registered, complete_records,
                                         inspect_new, log_skipped, refuse_at_paths, sort_records,
                                         name_moved_weights, stored_init_reference)
from mashup.library.rows import (COLUMNS, StaleEntry, UnreadableEntry, from_row, log_insert, read_rows, relocate_rows,
                                 to_row, unreadable_ids)

logger = logging.getLogger(__name__)

DB_NAME = "catalog.sqlite"
WHAT = "catalog"
KINDS = ("lora", "full")
LIBRARY_ENV = "MASHUP_LIBRARY"


def default_library_dir() -> Path:
    return Path(os.environ.get(LIBRARY_ENV) or Path.home() / ".mashup" / "library")


def check_kind(kind: str | None) -> None:
    """A checkpoint-kind filter must name a kind: a typo would match nothing and pass as an empty result."""
    if kind is not None and kind not in KINDS:
        raise MashupError(f"unknown checkpoint kind '{kind}'", "--kind", f"use one of: {', '.join(KINDS)}")


def _setup(conn) -> None:
    ensure_table(conn, "checkpoints", COLUMNS, "id")


class Library:
    """A persistent catalog of checkpoints; every write is one transaction."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory).expanduser() if directory else default_library_dir()
        self.db_path = self.directory / DB_NAME
        self._warned: set[str] = set()  # unreadable entries warned about (see ``_select``)
        if self.directory.exists() and not self.directory.is_dir():
            raise LibraryError("the library is a file, not a directory", str(self.directory),
                               f"give the library's directory (check --library / ${LIBRARY_ENV})")

    @classmethod
    def existing(cls, directory: str | Path | None = None) -> Library:
        """The library a command reads: a dir given (as ``directory`` or $MASHUP_LIBRARY) must hold a catalog, so a
        mistyped path is an error rather than an empty library; the default dir may not exist yet (empty)."""
        library = cls(directory)
        given = directory or os.environ.get(LIBRARY_ENV)
        if given and not library.db_path.exists():
            problem = "library dir not found" if not library.directory.exists() else f"no library catalog ({DB_NAME})"
            raise LibraryError(problem, str(library.directory),
                               f"check --library / ${LIBRARY_ENV}, or register checkpoints with "
                               "`mashup library add` first")
        return library

    def _write(self):
        return write_transaction(self.db_path, WHAT, _setup)

    def add(self, paths: Sequence[str | Path], *, task: str | None = None, base: str | None = None,
            init_reference: str | None = None, metadata: dict | None = None, data_fingerprint: str | None = None,
            lineage: dict | None = None, allow_pickle: bool = False, recursive: bool = False,
            workers: int | None = None, progress: Progress | None = None, repoint: Collection[str] | None = None
            ) -> Added:
        """Register checkpoints, all or none: every one is inspected and hashed (in parallel) before one transaction
        adds them (a refused add may still have recorded the new file stats of registered entries it found holding
        the same bytes, a cache of their hashing). ``recursive`` registers every adapter/model dir under the given
        dirs, skipping those already registered with the same weights (the result's ``skipped``) and those whose
        registration is stale, with a warning each (``stale``: the entry left as it is; one whose weights were found
        in another dir names it); named explicitly, a registered checkpoint is an error, unless its entry's dir is
        gone (moved: the entry is re-pointed); given ``repoint``, unless its id is in it instead (ids whose entries
        are re-pointed wherever their dirs are; no other is). The init reference, and a base that is a local path,
        are stored absolute. ``progress(done, total)`` is called as checkpoints are inspected."""
        init = stored_init_reference(init_reference)
        dirs = discover_checkpoints(paths) if recursive else [Path(p) for p in paths]
        registered = self.list() if recursive else []
        if not recursive:
            at_dirs = check_at_paths(self._at_paths(dirs))
            self._store_stats(at_dirs)  # stored even where refused, so these dirs are not hashed again next time
            refuse_at_paths(at_dirs, repoint)
        base_shapes = BaseShapes()  # the base's shapes read once for all the checkpoints added
        inspect = partial(inspect_to_register, base=base, task=task, allow_pickle=allow_pickle, base_shapes=base_shapes)
        new, rescanned, stale = inspect_new(dirs, registered, inspect, workers, progress)
        for record in new:
            record.init_reference, record.data_fingerprint = init, data_fingerprint
            record.metadata, record.lineage = dict(metadata or {}), dict(lineage or {})
        complete_records(new)
        checks, stale_elsewhere = checks_of_registered(new, rescanned, registered, stale)
        stale = name_moved_weights(stale + stale_elsewhere, new)  # where a moved one's weights are now
        left_out = {s.record.id for s in stale}  # a copy of a stale entry's weights found elsewhere is not added
        new = [r for r in new if r.id not in left_out]
        # with none new, a library that exists is not written (it may be read-only); one that does not is made
        inserted = (self._insert(new, skip_registered=recursive, repoint=repoint)
                    if new or not self.db_path.exists() else Added())
        self._store_stats([*checks, *stale])  # so that dirs hashed again for new stats are not hashed next time
        inserted.skipped = [c.record for c in rescanned] + inserted.skipped
        inserted.stale = stale + inserted.stale
        log_skipped(inserted.skipped, inserted.stale)
        return inserted

    def _at_paths(self, dirs: list[Path]) -> list[CheckpointRecord]:
        """The readable entries registered at ``dirs`` (as stored: resolved); an unreadable one is the add's to
        replace (see ``sort_records``), not warned about here."""
        paths = sorted({str(p.resolve()) for p in dirs})
        if not paths or not self.db_path.exists():
            return []
        return self._read(self._rows(f"WHERE path IN ({', '.join('?' * len(paths))})", tuple(paths)))[0]

    def _insert(self, records: list[CheckpointRecord], *, skip_registered: bool,
                repoint: Collection[str] | None = None) -> Added:
        """Insert ``records`` in one transaction (sorted by ``registration.sort_records``): the added (the relocated
        and repaired among them, as they now read), the skipped, the relocated and the repaired."""
        with self._write() as conn:
            existing = {i: (path, sha) for i, path, sha in conn.execute("SELECT id, path, sha256 FROM checkpoints")}
            paths = {r.path for r in records}
            near = {i for i, (path, _) in existing.items() if path in paths} | {r.id for r in records}  # to read
            unreadable = unreadable_ids(conn, near & existing.keys(), str(self.db_path))
            plan = sort_records(records, existing, unreadable, skip_registered=skip_registered, repoint=repoint)
            moved, stale = relocate_rows(conn, plan.moved, str(self.db_path), skip_stale=skip_registered)
            relocated = {r.id: r for r in moved}
            conn.executemany("DELETE FROM checkpoints WHERE id = ?", [(i,) for i in sorted(plan.replaced)])
            columns = ", ".join(COLUMNS)
            conn.executemany(f"INSERT INTO checkpoints ({columns}) VALUES ({', '.join('?' * len(COLUMNS))})",
                             [to_row(r) for r in plan.added])
        log_insert(plan.replaced, unreadable - plan.replaced, [(existing[i][0], r) for i, r in relocated.items()])
        kept = {r.id for r in plan.added} | relocated.keys()
        return Added([relocated.get(r.id, r) for r in records if r.id in kept], plan.skipped,
                     list(relocated.values()), plan.repaired, stale)

    def relocate(self, record: CheckpointRecord, path: str | Path, *, copied: bool = False) -> Freshness:
        """Re-point ``record``, whose dir is gone (or, ``copied``, still there: ``path`` holds a copy to use instead),
        at ``path`` if that holds the same checkpoint (the freshness check: a stat, hashing only files whose stats
        changed), as ``add`` of a moved checkpoint does; the check. Nothing is written when the entry, as read in
        the write, is gone, or was re-pointed meanwhile (its path is not ``record``'s, or, not ``copied``, is a dir
        again), or cannot be read."""
        moved = dataclasses.replace(record, path=str(Path(path).resolve()), task=None, init_reference=None,
                                    data_fingerprint=None)  # the entry's kept (see ``moved_entry``)
        check = check_freshness(moved)
        if check.status != "ok":
            return check
        moved.file_stats = check.new_stats or moved.file_stats
        try:
            with self._write() as conn:
                rows = select_rows(conn, "checkpoints", ["path"], "WHERE id = ?", (record.id,))
                if not rows or rows[0]["path"] != record.path or (not copied and Path(record.path).is_dir()):
                    return check
                relocate_rows(conn, [moved], str(self.db_path))
        except UnreadableEntry as exc:
            logger.warning("%s", exc.line())
            return check
        log_insert(set(), set(), [(record.path, moved)])
        return check

    def _rows(self, where: str = "", params: tuple = ()) -> list[dict[str, Any]]:
        with read_connection(self.db_path, WHAT) as conn:
            return select_rows(conn, "checkpoints", list(COLUMNS), f"{where} ORDER BY rowid", params)

    def _read(self, rows: list[dict[str, Any]]) -> tuple[list[CheckpointRecord], list[UnreadableEntry]]:
        return read_rows(rows, str(self.db_path))

    def entries(self) -> tuple[list[CheckpointRecord], list[UnreadableEntry]]:
        """Every record, and each catalog row that cannot be read as one (damaged or edited by hand)."""
        return self._read(self._rows())

    def _select(self, where: str = "", params: tuple = ()) -> list[CheckpointRecord]:
        """The readable records; a row that cannot be read is left out, with a warning once per ``Library``."""
        records, unreadable = self._read(self._rows(where, params))
        for entry in unreadable:
            if entry.id not in self._warned:
                self._warned.add(entry.id)
                logger.warning("%s", entry.line())
        return records

    def paths(self) -> list[str]:
        """Every entry's checkpoint dir, without building records (their shapes are most of a catalog's bytes)."""
        with read_connection(self.db_path, WHAT) as conn:
            rows = select_rows(conn, "checkpoints", ["path"], "ORDER BY rowid")
        return [row["path"] for row in rows if isinstance(row["path"], str)]

    def list(self, *, base: str | None = None, kind: str | None = None, task: str | None = None,
             merged_from: str | None = None, trained_on: str | None = None,
             trained_on_fingerprint: str | None = None) -> list[CheckpointRecord]:
        """Registered checkpoints, filtered: ``base`` by content identity (or spelling), ``merged_from`` by an id
        (prefix) in the lineage, ``trained_on`` by task or data fingerprint (a prefix of 6+ characters, or
        ``trained_on_fingerprint``), itself or through merged_from (``lineage.trained_on_ids``, as selection). A row
        that cannot be read is left out with a warning (``entries``)."""
        check_kind(kind)
        if trained_on is not None or trained_on_fingerprint is not None:  # lineage needs every record: one read
            everything = self._select("", ())
            fingerprint = trained_on_fingerprint or (trained_on if len(trained_on or "") >= FINGERPRINT_PREFIX_MIN
                                                     else None)
            saw = trained_on_ids(everything, trained_on, fingerprint)
            records = [r for r in everything if r.id in saw and kind in (None, r.kind) and task in (None, r.task)]
        else:
            clauses = {"kind = ?": kind, "task = ?": task}
            where = [c for c, v in clauses.items() if v is not None]
            records = self._select(("WHERE " + " AND ".join(where)) if where else "",
                                   tuple(v for v in clauses.values() if v is not None))
        if base is not None:
            matcher = BaseMatcher(base)
            records = [r for r in records if matcher.mismatch(r) is None]
        if merged_from is not None:
            records = [r for r in records if any(i.startswith(merged_from) for i in r.merged_from)]
        return records

    def _match(self, checkpoint_id: str) -> dict[str, Any]:
        """The one row whose id starts with ``checkpoint_id``, unread."""
        rows = self._rows("WHERE substr(id, 1, ?) = ?", (len(checkpoint_id), checkpoint_id)) if checkpoint_id else []
        if len(rows) != 1:
            problem = "no checkpoint" if not rows else f"{len(rows)} checkpoints match"
            raise LibraryError(f"{problem} with id '{checkpoint_id}'", str(self.directory),
                               "see `mashup library list` for ids")
        return rows[0]

    def get(self, checkpoint_id: str) -> CheckpointRecord:
        """Look up by id or unique id prefix; an ``UnreadableEntry`` if its row cannot be read."""
        return from_row(self._match(checkpoint_id), str(self.db_path))

    def find_by_digest(self, sha256: str) -> CheckpointRecord | None:
        """The record of weights with this content digest, if registered (ids are its first 12 hex)."""
        rows = self._rows("WHERE id = ? AND sha256 = ?", (sha256[:12], sha256))
        return from_row(rows[0], str(self.db_path)) if rows else None

    def remove(self, checkpoint_id: str) -> CheckpointRecord | UnreadableEntry:
        """Drop the entry, readable or not (then its ``UnreadableEntry`` is returned, with the id and path as far
        as the row gives them); the files on disk are left alone."""
        row = self._match(checkpoint_id)
        try:
            removed: CheckpointRecord | UnreadableEntry = from_row(row, str(self.db_path))
        except UnreadableEntry as exc:
            removed = exc
        with self._write() as conn:
            conn.execute("DELETE FROM checkpoints WHERE id = ?", (row["id"],))  # as stored, even if not text
        return removed

    def fresh(self, records: Sequence[CheckpointRecord], *, workers: int | None = None
              ) -> tuple[list[CheckpointRecord], list[tuple[CheckpointRecord, str]]]:
        """Split into (fresh, [(stale, reason)]) by re-checking each record's weight files.

        Unchanged size/mtime/ctime/inode: fresh at the cost of a ``stat``. Changed stats: the files are hashed
        again; the same bytes keep the record (its new stats are stored), other or missing bytes make it stale.
        """
        checks = parallel_map(check_freshness, list(records), workers)
        self._store_stats(checks)
        return ([c.record for c in checks if c.status == "ok"],
                [(c.record, c.reason or c.status) for c in checks if c.status != "ok"])

    def verify(self, records: Sequence[CheckpointRecord] | None = None, *, workers: int | None = None,
               progress: Progress | None = None) -> list[Freshness]:
        """Hash every weight file again; each result says ok, missing or changed (with the reason)."""
        records = self.list() if records is None else list(records)
        checks = parallel_map(lambda r: check_freshness(r, rehash=True), records, workers, progress)
        self._store_stats(checks)
        return checks

    def _store_stats(self, found: Sequence[Freshness | StaleEntry]) -> None:
        """Record the new stats of files whose bytes were found unchanged (a stale entry's too: its check's), so
        they are not hashed again."""
        checks = [f.check if isinstance(f, StaleEntry) else f for f in found]
        checks = [c for c in checks if c is not None]
        updates = [(json.dumps(c.new_stats), c.record.id, c.record.sha256) for c in checks if c.new_stats]
        if not updates:
            return
        try:
            with self._write() as conn:
                conn.executemany("UPDATE checkpoints SET file_stats = ? WHERE id = ? AND sha256 = ?", updates)
        except MashupError as exc:  # e.g. a read-only shared library: correct anyway, only re-hashed next time
            logger.warning("could not record re-checked file stats: %s", exc.line())
            return
        for check in checks:
            if check.new_stats:
                check.record.file_stats = check.new_stats
