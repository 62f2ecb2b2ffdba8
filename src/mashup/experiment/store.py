"""The experiment dir as a crash-safe results store.

Layout::

    <out>/experiment.yaml     the resolved config of the latest run (and version.json)
    <out>/artifacts/<name>/   one dir per computed job, content-addressed, renamed into place when complete
    <out>/units/<unit>.json   one record per finished unit: its job key, artifact, output hashes and result
    <out>/library/            the source checkpoints the experiment trained (when it trains them)

A unit counts as done only when its record exists, names the job key the current config resolves to,
and the artifact's files still have the recorded hashes. Artifacts appear by an atomic rename and records
by an atomic replace, so a run killed at any point leaves nothing that looks finished; the next run
removes the killed run's temporary dirs and redoes what has no valid record.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mashup.atomic_dir import clean_orphans
from mashup.errors import MashupError

logger = logging.getLogger(__name__)
RESULT = "unit_result.json"  # written last inside an artifact, before the dir is renamed into place


def hash_outputs(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory``, by relative path."""
    hashes = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        hashes[path.relative_to(directory).as_posix()] = digest.hexdigest()
    return hashes


def unit_file_name(unit_id: str) -> str:
    return unit_id.replace("/", "__") + ".json"


class ResultStore:
    """Records and artifacts of one experiment dir; :meth:`open` holds the dir's lock while it runs."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.units_dir = self.root / "units"
        self.artifacts_dir = self.root / "artifacts"
        self.library_dir = self.root / "library"

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
        """True once a job's artifact is complete (its result file is written last, before the rename)."""
        return (self.artifact(name) / RESULT).is_file()

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
        try:
            record = json.loads((self.units_dir / unit_file_name(unit_id)).read_text())
        except FileNotFoundError:
            return None, None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return None, str(exc)
        return (record, None) if isinstance(record, dict) and "unit" in record else (None, "not a unit record")

    def valid_record(self, unit_id: str, key: str) -> dict[str, Any] | None:
        """The unit's record if it is for this exact job and its outputs are unchanged; else None."""
        record = self.record(unit_id)
        if record is None or record.get("key") != key:
            return None
        artifact = self.artifact(record["artifact"])
        if not artifact.is_dir() or hash_outputs(artifact) != record["outputs"]:
            logger.warning("outputs of %s are missing or changed since they were recorded; a run records them again "
                           "as they are now (computed again if missing)", unit_id)
            return None
        return record

    def write(self, unit_id: str, record: dict[str, Any]) -> None:
        """Record a finished unit (atomically: a reader sees the old record or the new, never half)."""
        path = self.units_dir / unit_file_name(unit_id)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=self.units_dir)
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle, indent=1, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def records(self) -> dict[str, dict[str, Any]]:
        """Every recorded unit, by unit id (validity against a config is the runner's business)."""
        records = {}
        for path in sorted(self.units_dir.glob("*.json")):
            with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                record = json.loads(path.read_text())
                records[record["unit"]] = record
        return records
