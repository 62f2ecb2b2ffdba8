"""The experiment dir as a crash-safe results store.

Layout::

    <out>/experiment.yaml     the resolved config of the latest run (and version.json)
    <out>/artifacts/<name>/   one dir per computed job, content-addressed, renamed into place when complete
    <out>/units/<unit>.json   one record per finished unit: its job key, artifact, output hashes and result
    <out>/library/            the source checkpoints the experiment trained (when it trains them)

A unit counts as done only when its record exists, has the shape its readers need (records.py), names
the job key the current config resolves to, and the artifact still holds the files its manifest lists
(manifest.py; a record written before manifests: the files its ``outputs`` hash). Artifacts appear by an
atomic rename and records by an atomic replace, so a run killed at any point leaves nothing that looks
finished; the next run removes the killed run's temporary dirs and redoes what has no valid record. An
artifact edited since it was recorded is replaced by a fresh computation (:meth:`ResultStore.to_replace`); the
old one, with any file added to it by hand, is moved to ``<out>/artifacts/.replaced/<name>-<UTC time>``, and
before any artifact is computed the records naming it are moved to ``<out>/units/.replaced/``
(:meth:`ResultStore.retire_records`): a run killed between its rename and its records leaves it named by none,
so the next run reuses it. Both ``.replaced`` dirs are read by nothing: safe to delete.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mashup.atomic_dir import clean_orphans
from mashup.errors import MashupError
from mashup.io import readable_size
from mashup.experiment.manifest import RESULT as RESULT
from mashup.experiment.manifest import Difference, Manifest, from_outputs, verify
from mashup.experiment.manifest import hash_outputs as hash_outputs
from mashup.experiment.records import artifact_result, record_problem

logger = logging.getLogger(__name__)
REPLACED = ".replaced"  # under artifacts/ and units/: what was moved aside to be computed again (safe to delete)


def unit_file_name(unit_id: str) -> str:
    return unit_id.replace("/", "__") + ".json"


class ResultStore:
    """Records and artifacts of one experiment dir; :meth:`open` holds the dir's lock while it runs."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.units_dir = self.root / "units"
        self.artifacts_dir = self.root / "artifacts"
        self.library_dir = self.root / "library"
        self._scanned: list[dict[str, Any]] | None = None  # every record, read once for vouched()

    @contextlib.contextmanager
    def open(self) -> Iterator[ResultStore]:
        """Lock the dir against a second concurrent run, and clear what a killed run left half-written."""
        self.units_dir.mkdir(parents=True, exist_ok=True)
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MashupError("another `mashup experiment` is running in this dir", str(self.root),
                                  "wait for it to finish, or use another out dir") from None
            self._remove_partials()
            yield self

    def _remove_partials(self) -> None:
        # The lock makes this run the dir's only writer, so even an owner record too short to name its
        # writer (a kill between creating and writing it) is a killed run's and can go at once.
        clean_orphans(self.artifacts_dir, unreadable_after_s=0)
        for partial in self.units_dir.glob(".*.tmp"):
            logger.info("removing what an interrupted run left half-written: %s", partial)
            partial.unlink(missing_ok=True)

    def artifact(self, name: str) -> Path:
        return self.artifacts_dir / name

    def has_artifact(self, name: str) -> bool:
        """True once a job's artifact is complete: its result file, written last before the rename, is there and
        has its kind's result shape (records.py)."""
        return self.incomplete(name) is None

    def incomplete(self, name: str) -> str | None:
        """Why a job's artifact is not complete (see :meth:`has_artifact`); None when it is."""
        return artifact_result(self.artifact(name))[1]

    def record(self, unit_id: str) -> dict[str, Any] | None:
        record, problem = self._read(unit_id)
        if problem:  # cannot happen through write(); a hand-edited file
            logger.warning("ignoring unreadable unit record %s (%s); the unit will be redone",
                           self.units_dir / unit_file_name(unit_id), problem)
        return record

    def unreadable(self, unit_id: str) -> str | None:
        """Why the unit's record file cannot be read as a record; None when it can, or when there is none."""
        return self._read(unit_id)[1]

    def _read(self, unit_id: str) -> tuple[dict[str, Any] | None, str | None]:
        """The unit's record, or why its file is not one (both None: no file)."""
        return _load(self.units_dir / unit_file_name(unit_id))

    def valid_record(self, unit_id: str, key: str) -> dict[str, Any] | None:
        """The unit's record if it is for this exact job and its artifact holds the files recorded; else None.
        It comes with the manifest as verified now (stats refreshed, or made for a record without one), which
        is how a run confirming it records it."""
        record = self.record(unit_id)
        if record is None or record["key"] != key:
            return None
        manifest = self.checked_manifest(record)
        if isinstance(manifest, Difference):
            logger.warning("the artifact of %s (%s) no longer holds the files its record lists (%s since; edited, "
                           "removed or remade): the unit is not done", unit_id, record["artifact"], manifest)
            return None
        return {**record, "manifest": manifest}

    def checked_manifest(self, record: dict[str, Any]) -> Manifest | Difference:
        """The manifest of the record's artifact now, if it is complete and holds the files the record lists;
        else the first difference (an incomplete one: its result file removed, or edited to no result)."""
        artifact = self.artifact(record["artifact"])
        if not self.has_artifact(record["artifact"]):
            return Difference(RESULT, "changed" if (artifact / RESULT).is_file() else "removed")
        manifest = record.get("manifest")
        return verify(artifact, from_outputs(record["outputs"]) if manifest is None else manifest)

    def _naming(self, name: str) -> list[dict[str, Any]]:
        """Every record (read once until the next write) that names the artifact."""
        if self._scanned is None:
            self._scanned = list(self.records().values())
        return [r for r in self._scanned if r["artifact"] == name]

    def naming(self, name: str) -> list[str]:
        """The units whose records name the artifact (the records read once until the next write)."""
        return [r["unit"] for r in self._naming(name)]

    def _vouching(self, name: str) -> tuple[bool, str | None]:
        """Whether some record naming the artifact vouches for it (it holds the files that record lists); when none
        does, the first naming record's difference (None: no record names it)."""
        first = None
        for record in self._naming(name):
            checked = self.checked_manifest(record)
            if not isinstance(checked, Difference):
                return True, None
            first = first or f"{checked} since {record['unit']} recorded it"
        return False, first

    def vouched(self, name: str) -> bool:
        """True when some record names the artifact and it holds the files that record lists: it was made for a
        recorded unit (maybe remade for an equal unit after another's record), not edited since."""
        return self._vouching(name)[0]

    def to_replace(self, name: str) -> str | None:
        """Why a job's existing artifact must be computed again rather than reused (None: it is reused, or there
        is none): incomplete (its result file, written last, gone or not a result of its kind: a hand edit), or
        named by some record yet matching none (edited since it was recorded), whichever unit claims it first. One
        that no record names is a killed run's finished work: reused (see :meth:`retire_records`)."""
        if not self.artifact(name).exists():
            return None
        problem = self.incomplete(name)
        return f"incomplete ({problem})" if problem else self._vouching(name)[1]

    def discard_artifact(self, name: str, why: str) -> Path:
        """Move an artifact aside to compute it again, with whatever was added to it: to
        ``artifacts/.replaced/<name>-<UTC time>`` (safe to delete), in one atomic rename, so a run killed at any
        point leaves it in place or moved aside, never half of it. Returns where it went."""
        target = _aside(self.artifacts_dir / REPLACED, name)
        os.rename(self.artifact(name), target)
        logger.warning("artifact %s is computed again: %s; the old one is moved to %s (%s): safe to delete",
                       name, why, target, readable_size(_bytes_under(target)))
        return target

    def retire_records(self, name: str, units: Iterable[str]) -> list[Path]:
        """Move the records of ``units`` that name the artifact (``naming``'s, as the job was claimed; only their
        files are read) to ``units/.replaced/<file>-<UTC time>``, each in one atomic rename, before the artifact is
        computed (again): they vouch for bytes that are gone, so the units are not done (a rerun and ``mashup
        report`` see no record), and a run killed after the new artifact's rename, before its units' records,
        leaves an artifact no record names: reused, not replaced again. Returns where they went."""
        moved: list[Path] = []
        for unit in units:
            record = self.record(unit)
            if record is None or record["artifact"] != name:  # gone or rewritten since the claim
                continue
            path = self.units_dir / unit_file_name(unit)
            moved.append(_aside(self.units_dir / REPLACED, path.stem, ".json"))
            os.rename(path, moved[-1])
            logger.info("record of %s retired to %s: its artifact %s is computed again", unit, moved[-1], name)
        if moved:
            self._scanned = None
        return moved

    def replaced_note(self) -> str | None:
        """One line on what the ``.replaced`` dirs hold (a stat walk), for the end of a run; None when both are
        empty."""
        held = [(aside, what, entries) for aside, what in ((self.artifacts_dir / REPLACED, "replaced artifact(s)"),
                                                           (self.units_dir / REPLACED, "retired record(s)"))
                if (entries := _entries(aside))]
        if not held:
            return None
        total = sum(_bytes_under(entry) for _, _, entries in held for entry in entries)
        listed = " and ".join(f"{aside} holds {len(entries)} {what}" for aside, what, entries in held)
        return f"{listed}, {readable_size(total)} in all: nothing reads them again, safe to delete"

    def write(self, unit_id: str, record: dict[str, Any]) -> None:
        """Record a finished unit (atomically: a reader sees the old record or the new, never half)."""
        path = self.units_dir / unit_file_name(unit_id)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=self.units_dir)
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle, indent=1, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        self._scanned = None

    def records(self) -> dict[str, dict[str, Any]]:
        """Every readable unit record, by unit id (validity against a config is the runner's business)."""
        records = {}
        for path in sorted(self.units_dir.glob("*.json")):
            record, _ = _load(path)
            if record is not None:
                records[record["unit"]] = record
        return records


def _load(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The record in ``path``, or why it is not the record of the unit the file is named for (both None: no
    file). Valid JSON of another shape is no record: its readers would fail on it (records.py)."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, str(exc)
    problem = record_problem(record)
    if problem is None and unit_file_name(record["unit"]) != path.name:
        problem = f"not a unit record: it names unit {record['unit']!r}"
    return (None, problem) if problem else (record, None)


def _aside(directory: Path, name: str, suffix: str = "") -> Path:
    """A free path ``<directory>/<name>-<UTC time><suffix>`` (``-2``, ``-3``... when taken within a second)."""
    directory.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target, n = directory / f"{name}-{stamp}{suffix}", 1
    while target.exists():
        n += 1
        target = directory / f"{name}-{stamp}-{n}{suffix}"
    return target


def _entries(directory: Path) -> list[Path]:
    return sorted(directory.iterdir()) if directory.is_dir() else []


def _bytes_under(path: Path) -> int:
    """The size of the files under ``path`` (a stat of each; links not followed)."""
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    return sum(_bytes_under(Path(entry.path)) for entry in os.scandir(path))

